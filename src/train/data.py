"""Training and validation samples: JSONL/COCO examples -> token ids, labels and pixels.

Text is tokenised once, up front (token lengths drive the length-grouped batches and a
bad mask fails before any training); images are read in DataLoader workers by the one
image reader, where an unreadable file or a path outside the image root becomes a Skip
record carried in the batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import ProcessorMixin

from src.data.coco import load_captions, select_images
from src.data.images import crop_box, read_image
from src.data.jsonl import Example
from src.data.skips import Skip, SkipCounter
from src.models.llava import IGNORE_INDEX, image_token_count
from src.train.masking import MaskError, check_supervised, encode_batch


@dataclass(frozen=True)
class Sample:
    example_id: str
    image: str  # relative to the image root
    bbox_xyxy: tuple[float, float, float, float] | None  # crop this region of the image
    input_ids: list[int]
    labels: list[int]


def encode_examples(
    examples: Iterable[Example],
    processor: ProcessorMixin,
    *,
    max_length: int,
    drop_bad_masks: bool,
) -> tuple[list[Sample], SkipCounter]:
    """Tokenise and mask every example; return the samples and the dropped example ids.

    A prompt longer than `max_length` is always dropped and counted. A mask that fails
    its check (see `encode_batch`) raises unless `drop_bad_masks`. Image paths are
    checked when read (a path outside the root is a "path_escape" skip then).
    """
    examples = list(examples)
    encoded = encode_batch(processor.tokenizer, [(e.prompt, e.caption) for e in examples],
                           image_token=processor.image_token,
                           num_image_tokens=image_token_count(processor), max_length=max_length)
    samples, skipped = [], SkipCounter()
    for example, result in zip(examples, encoded, strict=True):
        if isinstance(result, MaskError):
            if result.reason != "prompt_too_long" and not drop_bad_masks:
                raise MaskError(result.reason, f"example {example.id}: {result}")
            skipped.add(Skip(example.id, result.reason, example.image, str(result)))
            continue
        bbox = example.bbox if example.kind == "region" else None
        samples.append(Sample(example.id, example.image, bbox, result.input_ids, result.labels))
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
    """Per item: `input_ids`, `labels`, `pixel_values`, or the Skip of its image (the
    Skip's item is the example id; a box outside the image is a "bad_box" skip)."""

    def __init__(self, samples: Sequence[Sample], processor: ProcessorMixin,
                 image_root: Path) -> None:
        self.samples = list(samples)
        self.image_processor = processor.image_processor
        self.image_root = Path(image_root)

    def __len__(self) -> int:
        return len(self.samples)

    def lengths(self) -> list[int]:
        return [len(sample.input_ids) for sample in self.samples]

    def __getitem__(self, index: int) -> dict[str, Any] | Skip:
        sample = self.samples[index]
        image = read_image(self.image_root, sample.example_id, sample.image)
        if isinstance(image, Skip):
            return image
        if sample.bbox_xyxy is not None:
            try:
                image = crop_box(image, sample.bbox_xyxy)
            except ValueError as error:  # a box outside the image
                return Skip(sample.example_id, "bad_box", sample.image, str(error))
        pixel_values = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
        return {"input_ids": sample.input_ids, "labels": sample.labels,
                "pixel_values": pixel_values, "example_id": sample.example_id}


class Collate:
    """Right-pads a batch; skipped items are left out, their Skips kept in `skipped`.

    `kept` marks, per item given, whether it is a row of the model inputs. A batch whose
    every image was skipped has no model inputs, only `skipped` and `kept`.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, items: Sequence[dict[str, Any] | Skip]) -> dict[str, Any]:
        kept = [item for item in items if not isinstance(item, Skip)]
        batch: dict[str, Any] = {
            "skipped": [item for item in items if isinstance(item, Skip)],
            "kept": torch.tensor([not isinstance(item, Skip) for item in items],
                                 dtype=torch.bool),
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
