"""GroundingDINO's training loss from transformers 5.24, with its two defects mended.

1. `GroundingDinoImageLoss._get_target_classes_one_hot` offsets sample i's class labels by
   `len(label_maps[i])` rather than by the label maps of all samples before it, so with a
   batch over 2 a phrase is trained toward another sample's phrase. `MendedImageLoss` uses
   cumulative offsets.
2. The two-stage (encoder) loss is computed on detached proposals, so the encoder's
   proposal heads (`enc_output`, `enc_output_norm`, `encoder_output_bbox_embed`) never
   learn and query selection stays random. `encoder_topk_loss` matches the same top-k
   proposals without detaching them, from `enc_outputs_class` / `enc_outputs_coord_logits`,
   and replaces the detached term.

`attach(model)` makes the model's own `loss` the mended decoder loss (last layer plus every
intermediate layer); `training_loss` adds the encoder term.
"""

from __future__ import annotations

import re
from itertools import accumulate

import torch
from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection
from transformers.loss.loss_for_object_detection import _set_aux_loss
from transformers.loss.loss_grounding_dino import (
    GroundingDinoHungarianMatcher,
    GroundingDinoImageLoss,
)
from transformers.models.grounding_dino.modeling_grounding_dino import (
    build_label_maps,
    build_text_mask,
)

LOSSES = ("labels", "boxes", "cardinality")
LAYER_SUFFIX = re.compile(r"_\d+$")  # "loss_ce_0": layer 0 of the intermediate outputs


class MendedImageLoss(GroundingDinoImageLoss):
    def _get_target_classes_one_hot(self, outputs: dict, targets: list[dict],
                                    indices: list[tuple[torch.Tensor, torch.Tensor]]
                                    ) -> torch.Tensor:
        """One-hot token targets of the matched queries: sample i's labels index the label
        maps of the whole batch after the rows of samples 0..i-1."""
        logits, label_maps = outputs["logits"], outputs["label_maps"]
        offsets = [0, *accumulate(len(label_map) for label_map in label_maps)]
        class_labels = torch.cat([target["class_labels"][matched] + offset
                                  for target, (_, matched), offset
                                  in zip(targets, indices, offsets, strict=False)])
        one_hot = torch.zeros_like(logits, dtype=torch.long)
        one_hot[self._get_source_permutation_idx(indices)] = (
            torch.cat(label_maps)[class_labels].to(torch.long))
        return one_hot


def _criterion(config: GroundingDinoConfig) -> MendedImageLoss:
    matcher = GroundingDinoHungarianMatcher(class_cost=config.class_cost,
                                            bbox_cost=config.bbox_cost,
                                            giou_cost=config.giou_cost)
    return MendedImageLoss(matcher=matcher, focal_alpha=config.focal_alpha, losses=list(LOSSES))


def _weights(config: GroundingDinoConfig) -> dict[str, float]:
    """transformers' weights: classification 2, boxes by the config's coefficients."""
    return {"loss_ce": 2.0, "loss_bbox": config.bbox_loss_coefficient,
            "loss_giou": config.giou_loss_coefficient}


def _weighted_sum(losses: dict[str, torch.Tensor], config: GroundingDinoConfig) -> torch.Tensor:
    """Weighted sum over the last layer and every intermediate one ("loss_ce_0", ...)."""
    weights = _weights(config)
    return sum(value * weights[base] for key, value in losses.items()
               if (base := LAYER_SUFFIX.sub("", key)) in weights)


def decoder_loss(logits: torch.Tensor, labels: list[dict], device: torch.device,
                 pred_boxes: torch.Tensor, config: GroundingDinoConfig,
                 label_maps: tuple[torch.Tensor, ...], text_mask: torch.Tensor,
                 outputs_class: torch.Tensor | None = None,
                 outputs_coord: torch.Tensor | None = None, **detached_encoder: object,
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[dict] | None]:
    """The model's `loss_function` (same call), mended: decoder layers only; the encoder
    term is `encoder_topk_loss`, since the detached one here cannot train the encoder."""
    outputs = {"logits": logits, "pred_boxes": pred_boxes, "label_maps": label_maps,
               "text_mask": text_mask}
    auxiliary = None
    if config.auxiliary_loss:
        auxiliary = _set_aux_loss(outputs_class, outputs_coord)
        for layer in auxiliary:
            layer.update(label_maps=label_maps, text_mask=text_mask)
        outputs["auxiliary_outputs"] = auxiliary
    losses = _criterion(config).to(device)(outputs, labels)
    return _weighted_sum(losses, config), losses, auxiliary


def encoder_topk_loss(outputs: object, labels: list[dict], input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, config: GroundingDinoConfig,
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The matched loss on the encoder's top `num_queries` proposals, with gradients: the
    proposals the model picks exactly as it picks them (highest token logit)."""
    enc_class, enc_coord = outputs.enc_outputs_class, outputs.enc_outputs_coord_logits
    topk = enc_class.max(-1).values.topk(config.num_queries, dim=1).indices
    logits = enc_class.gather(1, topk[..., None].expand(-1, -1, enc_class.shape[-1]))
    boxes = enc_coord.gather(1, topk[..., None].expand(-1, -1, 4)).sigmoid()
    enc = {"logits": logits, "pred_boxes": boxes,
           "label_maps": build_label_maps(logits, input_ids),
           "text_mask": build_text_mask(logits, attention_mask)}
    losses = _criterion(config).to(logits.device)(enc, labels)
    return _weighted_sum(losses, config), {f"{key}_enc": v for key, v in losses.items()}


def attach(model: GroundingDinoForObjectDetection) -> None:
    """Train `model` with the mended loss, intermediate decoder layers included."""
    model.config.auxiliary_loss = True
    model.loss_function = decoder_loss


def training_loss(model: GroundingDinoForObjectDetection, inputs: dict[str, torch.Tensor],
                  labels: list[dict]) -> tuple[torch.Tensor, dict[str, float]]:
    """The mended total loss of one batch (call `attach(model)` first) and its parts."""
    outputs = model(**inputs, labels=labels)
    encoder, encoder_parts = encoder_topk_loss(outputs, labels, inputs["input_ids"],
                                               inputs["attention_mask"], model.config)
    parts = {key: float(value.detach())
             for key, value in {**outputs.loss_dict, **encoder_parts}.items()}
    return outputs.loss + encoder, parts
