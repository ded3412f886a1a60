"""The mended GroundingDINO loss: each sample's labels point at its own phrases, and the
encoder's proposal heads get gradients (both wrong in transformers 5.24's own loss)."""

from __future__ import annotations

import random

import torch
from transformers import AutoProcessor, GroundingDinoForObjectDetection
from transformers.loss.loss_grounding_dino import GroundingDinoForObjectDetectionLoss

from src.demo.grounding_dino_loss import attach, decoder_loss, training_loss
from src.demo.tiny import tiny_grounding_dino_config
from src.demo.train_detector import detector_batch

TOKENS = 6


def _perfect_batch() -> tuple[torch.Tensor, list[dict], torch.Tensor, tuple, torch.Tensor]:
    """3 samples with 2, 3 and 1 phrases (one token each); one query per sample predicting
    its true box and exactly its true phrase's token."""
    label_maps = (torch.eye(TOKENS)[0:2], torch.eye(TOKENS)[2:5], torch.eye(TOKENS)[5:6])
    classes = [1, 0, 0]
    boxes = torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.5, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]])
    labels = [{"class_labels": torch.tensor([c]), "boxes": boxes[i:i + 1]}
              for i, c in enumerate(classes)]
    logits = torch.stack([label_maps[i][c] * 40 - 20 for i, c in enumerate(classes)])[:, None]
    text_mask = torch.ones(3, 1, TOKENS, dtype=torch.bool)
    return logits, labels, boxes[:, None], label_maps, text_mask


def test_a_perfect_prediction_costs_no_classification_loss() -> None:
    config = tiny_grounding_dino_config()
    logits, labels, boxes, label_maps, text_mask = _perfect_batch()
    _, losses, _ = decoder_loss(logits, labels, torch.device("cpu"), boxes, config, label_maps,
                                text_mask)
    assert losses["loss_ce"].item() < 1e-6
    assert losses["loss_bbox"].item() == 0.0
    # transformers' own loss trains sample 2 toward another sample's phrase
    config.two_stage = False
    _, upstream, _ = GroundingDinoForObjectDetectionLoss(
        logits, labels, torch.device("cpu"), boxes, config, label_maps, text_mask)
    assert upstream["loss_ce"].item() > 1.0


def _grads_of_proposal_heads(model: GroundingDinoForObjectDetection) -> list[float | None]:
    """Per proposal head, the summed |gradient| of its parameters (None: no gradient)."""
    heads = (model.model.enc_output, model.model.enc_output_norm,
             model.model.encoder_output_bbox_embed)
    grads = [[p.grad for p in head.parameters()] for head in heads]
    return [None if all(g is None for g in head) else
            float(sum(g.abs().sum() for g in head if g is not None)) for head in grads]


def test_the_encoder_proposal_heads_learn(tiny_models: dict) -> None:
    path = tiny_models["grounding-dino"]
    processor = AutoProcessor.from_pretrained(path)
    # one picture: with more, transformers' loss can index past the label maps (defect 1)
    inputs, labels = detector_batch(processor, random.Random(0), batch_size=1)

    upstream = GroundingDinoForObjectDetection.from_pretrained(path).train()
    upstream(**inputs, labels=labels).loss.backward()
    assert all(grad is None for grad in _grads_of_proposal_heads(upstream))

    mended = GroundingDinoForObjectDetection.from_pretrained(path).train()
    attach(mended)
    loss, parts = training_loss(mended, inputs, labels)
    loss.backward()
    # (the box head's last layer starts at zero, so only it gets a gradient on step one)
    assert all(grad is not None and grad > 0 for grad in _grads_of_proposal_heads(mended))
    assert {"loss_ce_enc", "loss_bbox_enc", "loss_ce_0"} <= set(parts)
