"""What training the demo's tiny models shares: a reproducible CPU, fresh demo pictures, and
the optimiser schedule.

A retrain must give the same bytes (DVC caches the demo stage on them), so every run fixes
the torch thread count and seeds, and draws its pictures from its own `random.Random`.
Pictures go through JPEG as the demo's files do, so the models train on what they will see.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from PIL import Image

from src.demo.synthetic_coco import COLORS, SHAPES, SIZES, Scene, jpeg_bytes, random_scene
from src.models.device_policy import torch_threads

TRAIN_THREADS = 1  # results shift with the thread count: fix it. 2 threads on 2 busy cores
# run the tiny models ~50x slower (threads wait on each other), 1 thread does not
# Every phrase the demo's captions can name a shape with ("large red circle").
PHRASES = tuple(f"{size} {color} {kind}" for size in SIZES for color in COLORS for kind in SHAPES)


@contextmanager
def reproducible(seed: int, threads: int = TRAIN_THREADS) -> Iterator[None]:
    """Fixed threads and a seeded torch generator for the block; the old thread count after."""
    with torch_threads(threads):
        torch.manual_seed(seed)
        yield


def as_stored(scene: Scene) -> Scene:
    """The scene with its picture round-tripped through the demo's JPEG encoding."""
    image = Image.open(io.BytesIO(jpeg_bytes(scene.image))).convert("RGB")
    return Scene(image, scene.shapes, scene.background)


def stored_scenes(rng: random.Random, count: int,
                  size: tuple[int, int] | None = None) -> list[Scene]:
    return [as_stored(random_scene(rng, size)) for _ in range(count)]


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  floor: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up, then cosine down to `floor` x the base learning rate."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class OptimRecipe:
    """The optimisation knobs `fit` reads; each model's recipe adds its own."""

    steps: int
    lr: float
    weight_decay: float
    warmup_steps: int
    max_grad_norm: float


def fit(model: torch.nn.Module, recipe: OptimRecipe, step_loss: Callable[[], torch.Tensor],
        on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """`recipe.steps` AdamW steps on `step_loss()` (warm-up then cosine, gradients clipped
    to `recipe.max_grad_norm`); the model ends in eval mode. Returns every step's loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr,
                                  weight_decay=recipe.weight_decay)
    schedule = warmup_cosine(optimizer, recipe.warmup_steps, recipe.steps)
    model.train()
    losses = []
    for step in range(recipe.steps):
        loss = step_loss()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
    model.eval()
    return losses
