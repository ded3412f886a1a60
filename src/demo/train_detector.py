"""Training of the demo's tiny GroundingDINO on fresh demo pictures with the mended loss.

Each step draws a batch of new pictures of one size (so no picture is padded more than the
detect stage pads it: to its canvas, `canvas_size`). The prompt is the picture's phrases as
the detect stage builds it (`build_prompt`: lower case, "." after each), in a shuffled order;
a shape's class label is its phrase's index in the prompt and its box is normalised
(cx, cy, w, h) of the unpadded picture, the frame the detect stage reads boxes in. The
optimiser is the one that worked on this CPU (STACK-NOTES: batch 8, AdamW 5e-4, weight decay
1e-4, 200 warm-up steps then cosine to 0.1x, gradient clip 0.1).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import GroundingDinoForObjectDetection, ProcessorMixin

from src.augment.grounding import canvas_size
from src.augment.spans import build_prompt
from src.demo.grounding_dino_loss import attach, training_loss
from src.demo.synthetic_coco import IMAGE_SIZES, Scene
from src.demo.training import OptimRecipe, fit, stored_scenes


@dataclass(frozen=True)
class DetectorRecipe(OptimRecipe):
    steps: int = 4150
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    max_grad_norm: float = 0.1
    batch_size: int = 8


def _target(scene: Scene, rng: random.Random) -> tuple[str, dict[str, torch.Tensor]]:
    """The scene's prompt (its phrases, shuffled) and its labels for the loss."""
    shapes = rng.sample(scene.shapes, len(scene.shapes))
    width, height = scene.image.size
    boxes = [((x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height)
             for x0, y0, x1, y1 in (shape.box_xyxy for shape in shapes)]
    return build_prompt([shape.phrase() for shape in shapes]).text, {
        "class_labels": torch.arange(len(shapes)),
        "boxes": torch.tensor(boxes, dtype=torch.float32),
    }


def detector_batch(processor: ProcessorMixin, rng: random.Random,
                   batch_size: int) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Model inputs and labels for `batch_size` fresh pictures of one size."""
    size = rng.choice(IMAGE_SIZES)
    scenes = stored_scenes(rng, batch_size, size)
    prompts, labels = zip(*(_target(scene, rng) for scene in scenes), strict=True)
    image_processor = processor.image_processor
    height, width = canvas_size(image_processor, *size)
    pixels = image_processor(images=[scene.image for scene in scenes], return_tensors="pt",
                             do_pad=True, pad_size={"height": height, "width": width})
    tokens = processor.tokenizer(list(prompts), padding=True, return_tensors="pt")
    inputs = {"pixel_values": pixels["pixel_values"], "pixel_mask": pixels["pixel_mask"],
              **tokens}
    return inputs, list(labels)


def train_detector(model: GroundingDinoForObjectDetection, processor: ProcessorMixin,
                   recipe: DetectorRecipe, seed: int,
                   on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `model` in place with the mended loss (call inside `reproducible`); returns the
    loss of every step."""
    rng = random.Random(f"{seed}-detector")
    attach(model)

    def step_loss() -> torch.Tensor:
        inputs, labels = detector_batch(processor, rng, recipe.batch_size)
        return training_loss(model, inputs, labels)[0]

    return fit(model, recipe, step_loss, on_step)
