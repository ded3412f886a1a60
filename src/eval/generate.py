"""Batched LLaVA captioning: images decoded in DataLoader workers, left padding, in shards.

Generation is greedy by default (num_beams 1, no sampling), so a caption depends on the
model, the image and these settings, not on the batch it ran in: left padding with an
attention mask gives the same caption as batch size 1, and a resumed or multi-process run
the same captions as one uninterrupted process. (Exactly so in fp32, as the tests check;
in bf16 a different batch shape can change rounding and, rarely, a near-tied token.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm
from transformers import BatchFeature, PreTrainedModel, ProcessorMixin

from src.data.images import ImageDataset
from src.data.shard_map import by_shard, shard_batches
from src.data.skips import Skip, SkipCounter
from src.models.device_policy import oom_advice
from src.models.llava import format_prompt

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaptionSettings:
    prompt: str
    max_new_tokens: int
    num_beams: int = 1  # 1 = greedy
    min_new_tokens: int = 0  # > 0 only for fixed-length throughput benchmarks

    def generate_kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.min_new_tokens,
                "num_beams": self.num_beams, "do_sample": False}


PREDICTION_DTYPES = {"image_id": "int64", "caption": "str"}


def predictions_frame(image_ids: Sequence[int], captions: Sequence[str]) -> pd.DataFrame:
    """Captions as a table (a shard's rows): image_id, caption."""
    return pd.DataFrame({"image_id": list(image_ids), "caption": list(captions)},
                        columns=list(PREDICTION_DTYPES)).astype(PREDICTION_DTYPES)


@dataclass
class CaptionBatch:
    image_ids: list[int]  # the images in `inputs`, in row order
    inputs: BatchFeature | None  # None when every image of the batch was skipped
    skips: list[Skip]


def build_inputs(processor: ProcessorMixin, images: Sequence[Image.Image],
                 prompts: Sequence[str]) -> BatchFeature:
    """Processor inputs for one prompt per image, LEFT-padded so generation appends in place."""
    return processor(images=list(images), text=[format_prompt(p) for p in prompts],
                     padding=True, padding_side="left", return_tensors="pt")


class Collate:
    """Runs in the DataLoader workers: separates skipped images and builds model inputs."""

    def __init__(self, processor: ProcessorMixin, prompt: str) -> None:
        self.processor = processor
        self.prompt = prompt

    def __call__(self, samples: Sequence[tuple[int, Image.Image | Skip]]) -> CaptionBatch:
        good = [(image_id, image) for image_id, image in samples if isinstance(image, Image.Image)]
        skips = [image for _, image in samples if isinstance(image, Skip)]
        inputs = None
        if good:
            inputs = build_inputs(self.processor, [image for _, image in good],
                                  [self.prompt] * len(good))
        return CaptionBatch([image_id for image_id, _ in good], inputs, skips)


@torch.inference_mode()
def caption_inputs(model: PreTrainedModel, processor: ProcessorMixin, inputs: BatchFeature,
                   settings: CaptionSettings) -> list[str]:
    """Generate for a left-padded batch and decode only the new tokens, stripped."""
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    output = model.generate(**inputs, **settings.generate_kwargs())
    new_tokens = output[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def caption_shards(model: PreTrainedModel, processor: ProcessorMixin, images: ImageDataset,
                   shards: Sequence[Sequence[int]], settings: CaptionSettings, *,
                   batch_size: int, num_workers: int, progress: bool = True,
                   ) -> Iterator[tuple[list[int], pd.DataFrame, SkipCounter]]:
    """Caption `shards` (lists of positions in `images`) with one DataLoader; yields each
    shard's (positions, captions table, skips by image id) when its last batch is done."""
    plan = shard_batches(shards, lambda shard: [list(shard[start:start + batch_size])
                                                for start in range(0, len(shard), batch_size)])
    loader = DataLoader(images, batch_sampler=[batch for _, batch in plan],
                        num_workers=num_workers, collate_fn=Collate(processor, settings.prompt))

    def captioned() -> Iterator[tuple[list[int], list[str], list[Skip]]]:
        with tqdm(total=sum(map(len, shards)), desc="captions", unit="img",
                  disable=not progress) as bar:
            for batch in loader:
                captions = [] if batch.inputs is None else caption_inputs(
                    model, processor, batch.inputs, settings)
                bar.update(len(batch.image_ids) + len(batch.skips))
                yield batch.image_ids, captions, batch.skips

    with oom_advice("evaluate", f"lower evaluate.batch_size (now {batch_size}; the seed "
                    "command's --batch-size)"):
        for shard, done in by_shard(plan, captioned()):
            skips = SkipCounter()
            for skip in (skip for _, _, part in done for skip in part):
                skips.add(skip)
            yield (list(shards[shard]),
                   predictions_frame([i for ids, _, _ in done for i in ids],
                                     [c for _, captions, _ in done for c in captions]), skips)
