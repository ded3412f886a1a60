"""Conveniences only the tests call: one-shot forms of library functions that the pipeline
runs batched or preprocessed in DataLoader workers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image
from transformers import CLIPModel, PreTrainedModel, PreTrainedTokenizerBase, ProcessorMixin

from src.eval.clipscore import ClipScores, score_pixels
from src.eval.generate import CaptionSettings, build_inputs, caption_inputs
from src.models.clip import image_pixels, paired_cosine_pixels
from src.train.masking import EncodedText, MaskError, encode_batch


def paired_cosine(
    model: CLIPModel, processor: ProcessorMixin, images: Sequence[Image.Image], texts: Sequence[str]
) -> torch.Tensor:
    """cos(image_i, text_i) for each pair, as a CPU float32 tensor of shape (n,)."""
    return paired_cosine_pixels(model, processor, image_pixels(processor, images), texts)


def score_batch(model: CLIPModel, processor: ProcessorMixin, images: Sequence[Image.Image],
                candidates: Sequence[str], references: Sequence[Sequence[str]]) -> ClipScores:
    """CLIP-S and RefCLIP-S of one batch of (image, candidate caption, reference captions)."""
    return score_pixels(model, processor, image_pixels(processor, images), candidates, references)


def caption_images(model: PreTrainedModel, processor: ProcessorMixin,
                   images: Sequence[Image.Image], prompts: Sequence[str],
                   settings: CaptionSettings) -> list[str]:
    """One caption per (image, prompt); prompts may differ in length (left padding)."""
    return caption_inputs(model, processor, build_inputs(processor, images, prompts), settings)


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, caption: str, *,
                   image_token: str, num_image_tokens: int, max_length: int) -> EncodedText:
    """`encode_batch` for one pair; raises its MaskError."""
    (encoded,) = encode_batch(tokenizer, [(prompt, caption)], image_token=image_token,
                              num_image_tokens=num_image_tokens, max_length=max_length)
    if isinstance(encoded, MaskError):
        raise encoded
    return encoded


def flat_metrics(metrics: dict) -> dict:
    """Intervals ([low, high]) as two keys, so pytest.approx can compare metrics dicts."""
    flat = {}
    for key, value in metrics.items():
        flat.update({f"{key}_{n}": v for n, v in enumerate(value)} if isinstance(value, list)
                    else {key: value})
    return flat
