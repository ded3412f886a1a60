"""Training and validation samples: JSONL/COCO examples -> token ids, labels and pixels.

Text is tokenised once, up front (token lengths drive the length-grouped batches and a
bad mask fails before any training); images are decoded in DataLoader workers, where an
unreadable file becomes a counted skip carried in the batch.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import ProcessorMixin

from src.data.coco import load_captions, resolve_image_path, select_images
from src.data.images import ImageSkip, crop_box, load_rgb
from src.data.jsonl import Example
from src.models.llava import IGNORE_INDEX, image_token_count
from src.train.masking import MaskError, check_supervised, encode_batch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    example_id: str
    image_path: Path
    bbox_xyxy: tuple[float, float, float, float] | None  # crop this region of the image
    input_ids: list[int]
    labels: list[int]


def encode_examples(
    examples: Iterable[Example],
    image_root: Path,
    processor: ProcessorMixin,
    *,
    max_length: int,
    drop_bad_masks: bool,
    skip_bad_paths: bool,
) -> tuple[list[Sample], Counter]:
    """Tokenise and mask every example; return the samples and skipped counts by reason.

    A prompt longer than `max_length` is always dropped and counted. A mask that fails
    its check (see `encode_batch`) raises unless `drop_bad_masks`; an image path that
    escapes `image_root` raises unless `skip_bad_paths`.
    """
    examples = list(examples)
    encoded = encode_batch(processor.tokenizer, [(e.prompt, e.caption) for e in examples],
                           image_token=processor.image_token,
                           num_image_tokens=image_token_count(processor), max_length=max_length)
    samples, skipped = [], Counter()
    for example, result in zip(examples, encoded, strict=True):
        try:
            image_path = resolve_image_path(image_root, example.image)
        except ValueError as error:
            if not skip_bad_paths:
                raise ValueError(f"example {example.id}: {error}") from error
            logger.warning("skipping example %s: %s", example.id, error)
            skipped["bad_path"] += 1
            continue
        if isinstance(result, MaskError):
            if result.reason != "prompt_too_long" and not drop_bad_masks:
                raise MaskError(result.reason, f"example {example.id}: {result}")
            logger.warning("skipping example %s: %s", example.id, result)
            skipped[result.reason] += 1
            continue
        bbox = example.bbox if example.kind == "region" else None
        samples.append(Sample(example.id, image_path, bbox, result.input_ids, result.labels))
    return samples, skipped


def validation_examples(captions_path: Path, num_examples: int, prompt: str,
                        seed: int) -> list[Example]:
    """One full-image example per image for a seeded slice of a COCO captions file (each
    image's lowest-id caption); image paths are file names, relative to the images dir."""
    caption_set = load_captions(captions_path)
    by_image = caption_set.by_image()
    examples = []
    for image in select_images(caption_set, num_examples, seed):
        caption = min(by_image[image.image_id], key=lambda c: c.caption_id)
        examples.append(Example(id=f"val-{image.image_id}", image=image.file_name, kind="full",
                                bbox=None, prompt=prompt, caption=caption.caption))
    return examples


class CaptionDataset(Dataset):
    """Per item: `input_ids`, `labels`, `pixel_values`, or `skip` (an image skip reason)."""

    def __init__(self, samples: Sequence[Sample], processor: ProcessorMixin) -> None:
        self.samples = list(samples)
        self.image_processor = processor.image_processor

    def __len__(self) -> int:
        return len(self.samples)

    def lengths(self) -> list[int]:
        return [len(sample.input_ids) for sample in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        try:
            image = load_rgb(sample.image_path)
            if sample.bbox_xyxy is not None:
                image = crop_box(image, sample.bbox_xyxy)
        except ImageSkip as skip:
            logger.warning("skipping image %s", skip)
            return {"skip": skip.reason}
        except ValueError as error:  # a box outside the image
            logger.warning("skipping example %s: %s", sample.example_id, error)
            return {"skip": "bad_box"}
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"input_ids": sample.input_ids, "labels": sample.labels,
                "pixel_values": pixel_values, "example_id": sample.example_id}


class Collate:
    """Right-pads a batch; skipped items are left out, their reasons kept in `skipped`.

    `kept` marks, per item given, whether it is a row of the model inputs. A batch whose
    every image was skipped has no model inputs, only `skipped` and `kept`.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        kept = [item for item in items if "skip" not in item]
        batch: dict[str, Any] = {
            "skipped": [item["skip"] for item in items if "skip" in item],
            "kept": torch.tensor(["skip" not in item for item in items], dtype=torch.bool),
        }
        if not kept:
            return batch
        for item in kept:
            check_supervised(item["labels"], f"example {item['example_id']}")
        width = max(len(item["input_ids"]) for item in kept)
        input_ids = torch.full((len(kept), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(kept), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(kept), width), dtype=torch.long)
        for row, item in enumerate(kept):
            length = len(item["input_ids"])
            input_ids[row, :length] = torch.tensor(item["input_ids"])
            labels[row, :length] = torch.tensor(item["labels"])
            attention_mask[row, :length] = 1
        batch.update(input_ids=input_ids, labels=labels, attention_mask=attention_mask,
                     pixel_values=torch.stack([item["pixel_values"] for item in kept]))
        return batch
