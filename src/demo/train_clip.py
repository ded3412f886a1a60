"""Contrastive training of the demo's tiny CLIP: shape crops against every demo phrase, and
full pictures against their captions.

Each step draws fresh demo pictures and crops every shape as the clip_score stage does
(`crop_box` with its context padding, CLIP's own preprocessing), with the box jittered as a
detector's would be. Every crop is scored against all 36 phrases, so the phrases of a wrong
colour or a wrong shape are the negatives, in both directions (crop -> phrases and
phrase -> crops). A phrase that differs only in size counts as a positive: a crop padded by
a fraction of its own box shows a small and a large shape alike, so no model could tell.

Each step also draws fresh whole pictures, each with one of its five captions worded as
CLIPScore words it ("A photo depicts ..."), and scores every picture against every caption
of the batch: so CLIPScore ranks a picture's own caption above another's, and the encoder,
which is also the demo LLaVA's vision tower, learns what a whole picture shows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import CLIPModel, ProcessorMixin

from src.data.images import crop_box
from src.demo.synthetic_coco import scene_captions
from src.demo.training import PHRASES, OptimRecipe, fit, stored_scenes
from src.eval.clipscore import with_prefix
from src.models.clip import image_pixels


@dataclass(frozen=True)
class ClipRecipe(OptimRecipe):
    steps: int = 400
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    max_grad_norm: float = 1.0
    crops_per_step: int = 64
    images_per_step: int = 32  # whole pictures, each against one of its captions
    box_jitter: float = 0.1  # each box edge moves by up to this fraction of the box side


def object_name(phrase: str) -> str:
    """"large red circle" -> "red circle": what a padded crop can show."""
    return phrase.split(" ", 1)[1]


def _jittered(box: tuple[int, int, int, int], jitter: float,
              rng: random.Random) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * jitter, (y1 - y0) * jitter
    return (x0 + rng.uniform(-dx, dx), y0 + rng.uniform(-dy, dy),
            x1 + rng.uniform(-dx, dx), y1 + rng.uniform(-dy, dy))


def crop_batch(rng: random.Random, count: int, pad_frac: float,
               jitter: float) -> tuple[list[Image.Image], list[str]]:
    """`count` crops of fresh demo shapes and each one's phrase."""
    crops: list[Image.Image] = []
    phrases: list[str] = []
    while len(crops) < count:
        for scene in stored_scenes(rng, 1):
            for shape in scene.shapes:
                crops.append(crop_box(scene.image, _jittered(shape.box_xyxy, jitter, rng),
                                      pad_frac))
                phrases.append(shape.phrase())
    return crops[:count], phrases[:count]


def caption_batch(rng: random.Random, count: int) -> tuple[list[Image.Image], list[str]]:
    """`count` fresh demo pictures and one of each one's captions, with CLIPScore's prefix."""
    scenes = stored_scenes(rng, count)
    return [s.image for s in scenes], [
        with_prefix(rng.choice(scene_captions(rng, s.shapes, s.background))) for s in scenes]


def contrastive_loss(model: CLIPModel, pixel_values: torch.Tensor, text_inputs: dict,
                     positives: torch.Tensor) -> torch.Tensor:
    """Mean of crop->phrase and phrase->crop InfoNCE, where `positives[i, j]` marks every
    phrase j that fits crop i (probability mass on all of them counts)."""
    image = torch.nn.functional.normalize(
        model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    text = torch.nn.functional.normalize(
        model.get_text_features(**text_inputs).pooler_output, dim=-1)
    logits = model.logit_scale.exp() * image @ text.T
    masked = logits.masked_fill(~positives, float("-inf"))
    image_to_text = (logits.logsumexp(dim=1) - masked.logsumexp(dim=1)).mean()
    present = positives.any(dim=0)
    text_to_image = (logits.logsumexp(dim=0) - masked.logsumexp(dim=0))[present].mean()
    return (image_to_text + text_to_image) / 2


def train_clip(model: CLIPModel, processor: ProcessorMixin, recipe: ClipRecipe, seed: int,
               pad_frac: float, on_step: Callable[[int, float], None] | None = None,
               ) -> list[float]:
    """Train `model` in place (call inside `reproducible`); returns the loss of every step:
    the crop-phrase loss plus the picture-caption loss (a caption two pictures share, as
    one-shape pictures can, is a positive of both)."""
    rng = random.Random(f"{seed}-clip")
    text_inputs = dict(processor.tokenizer(list(PHRASES), padding=True, return_tensors="pt"))
    names = [object_name(p) for p in PHRASES]

    def step_loss() -> torch.Tensor:
        crops, phrases = crop_batch(rng, recipe.crops_per_step, pad_frac, recipe.box_jitter)
        positives = torch.tensor([[object_name(p) == name for name in names] for p in phrases])
        crop_loss = contrastive_loss(model, image_pixels(processor, crops), text_inputs,
                                     positives)
        images, captions = caption_batch(rng, recipe.images_per_step)
        same = torch.tensor([[a == b for b in captions] for a in captions])
        caption_inputs = dict(processor.tokenizer(captions, padding=True, return_tensors="pt"))
        return crop_loss + contrastive_loss(model, image_pixels(processor, images),
                                            caption_inputs, same)

    return fit(model, recipe, step_loss, on_step)
