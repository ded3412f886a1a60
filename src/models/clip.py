"""CLIP image-text cosine similarity: region scoring (augment) and CLIPScore (eval) share it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import AutoProcessor, CLIPModel, ProcessorMixin

from src.models.hub import load_pretrained


def load_clip(
    id_or_dir: str, device: torch.device, dtype: torch.dtype = torch.float32, *,
    revision: str | None = None,
) -> tuple[CLIPModel, ProcessorMixin]:
    """CLIP and its processor, both at `revision` of a hub id (None = main)."""
    model = load_pretrained(CLIPModel.from_pretrained, id_or_dir, revision=revision, dtype=dtype)
    processor = load_pretrained(AutoProcessor.from_pretrained, id_or_dir, revision=revision)
    return model.to(device).eval(), processor


def image_pixels(processor: ProcessorMixin, images: Sequence[Image.Image]) -> torch.Tensor:
    """CLIP's preprocessing alone (resize, crop, normalise): can run in DataLoader workers."""
    return processor.image_processor(images=list(images), return_tensors="pt")["pixel_values"]


@torch.inference_mode()
def embed_pixels(model: CLIPModel, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised projected embeddings of preprocessed images, float32 on the model's device."""
    out = model.get_image_features(pixel_values=pixel_values.to(model.device, model.dtype))
    return torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)


def embed_images(
    model: CLIPModel, processor: ProcessorMixin, images: Sequence[Image.Image]
) -> torch.Tensor:
    """L2-normalised projected image embeddings, shape (n, d), float32 on the model's device."""
    return embed_pixels(model, image_pixels(processor, images))


@torch.inference_mode()
def embed_texts(model: CLIPModel, processor: ProcessorMixin, texts: Sequence[str]) -> torch.Tensor:
    """L2-normalised projected text embeddings; texts over 77 tokens are truncated, not an error."""
    tokens = processor(
        text=list(texts),
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=model.config.text_config.max_position_embeddings,
    )
    out = model.get_text_features(
        input_ids=tokens["input_ids"].to(model.device),
        attention_mask=tokens["attention_mask"].to(model.device),
    )
    return torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)


def paired_cosine_pixels(
    model: CLIPModel, processor: ProcessorMixin, pixel_values: torch.Tensor, texts: Sequence[str]
) -> torch.Tensor:
    """cos(image_i, text_i) for each pair of images preprocessed with `image_pixels` and
    texts, as a CPU float32 tensor of shape (n,).

    The text tower runs once per distinct text: regions of one image share its few
    phrases, so a batch of crops holds far fewer captions than crops."""
    if len(pixel_values) != len(texts):
        raise ValueError(f"{len(pixel_values)} images but {len(texts)} texts")
    distinct = {text: n for n, text in enumerate(dict.fromkeys(texts))}
    image_emb = embed_pixels(model, pixel_values)
    text_emb = embed_texts(model, processor, list(distinct))
    rows = torch.tensor([distinct[text] for text in texts], device=text_emb.device)
    return (image_emb * text_emb[rows]).sum(dim=-1).cpu()
