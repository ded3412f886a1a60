"""CLIP scores of detected regions: each box's padded crop against its region caption.

The region caption is `caption_template` with "{phrase}" replaced by the grounded
phrase ("{phrase}" alone scores the bare phrase; "a photo of {phrase}" the CLIP
paper's prompt). Images are decoded once per image, cropped and preprocessed in
DataLoader workers while the model scores the previous crops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import ProcessorMixin

from src.data.boxes import BOX_COLUMNS
from src.data.images import ImageDataset, crop_box
from src.data.skips import Skip
from src.models.clip import image_pixels, paired_cosine_pixels
from src.models.device_policy import oom_advice

PLACEHOLDER = "{phrase}"


def region_caption(template: str, phrase: str) -> str:
    """The template (params.py checks it holds {phrase}) with the phrase filled in."""
    return template.replace(PLACEHOLDER, phrase)


def drop_small_boxes(detections: pd.DataFrame, min_box_frac: float) -> pd.DataFrame:
    """Rows whose box covers at least `min_box_frac` of the image and has some area."""
    width = detections["box_x1"] - detections["box_x0"]
    height = detections["box_y1"] - detections["box_y0"]
    area = width * height
    keep = (width > 0) & (height > 0) & (
        area >= min_box_frac * detections["width"] * detections["height"])
    return detections[keep].reset_index(drop=True)


@dataclass(frozen=True)
class _ImageCrops:
    rows: np.ndarray  # positions in the regions table
    boxes_xyxy: np.ndarray


class _Crop:
    """Runs in the DataLoader workers, once per image: all its crops, preprocessed for CLIP."""

    def __init__(self, items: Mapping[int, _ImageCrops], processor: ProcessorMixin,
                 pad_frac: float) -> None:
        self.items = items
        self.processor = processor
        self.pad_frac = pad_frac

    def __call__(self, sample: tuple[int, Image.Image | Skip],
                 ) -> tuple[np.ndarray, torch.Tensor | Skip]:
        image_id, image = sample
        item = self.items[image_id]
        if isinstance(image, Skip):
            return item.rows, image
        crops = [crop_box(image, tuple(box), self.pad_frac) for box in item.boxes_xyxy.tolist()]
        return item.rows, image_pixels(self.processor, crops)


def crop_loader(regions: pd.DataFrame, image_dir: Path, processor: ProcessorMixin,
                pad_frac: float, num_workers: int) -> DataLoader:
    """Per image, in table order: (row positions, pixel values or the image's Skip, whose
    item is its image id)."""
    boxes = regions[BOX_COLUMNS].to_numpy(dtype=np.float64)
    groups = [(int(image_id), str(group["file_name"].iloc[0]), group.index.to_numpy())
              for image_id, group in regions.groupby("image_id", sort=False)]
    items = {image_id: _ImageCrops(rows, boxes[rows]) for image_id, _, rows in groups}
    dataset = ImageDataset([(image_id, file_name) for image_id, file_name, _ in groups], image_dir)
    return DataLoader(dataset, batch_size=None, collate_fn=_Crop(items, processor, pad_frac),
                      num_workers=num_workers,
                      prefetch_factor=4 if num_workers else None)


def crop_batches(loader: DataLoader, batch_size: int,
                 on_skip: Callable[[Skip], None],
                 ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Regroup per-image crops into batches of exactly `batch_size` (the last may be short)."""
    rows: list[np.ndarray] = []
    pixels: list[torch.Tensor] = []
    buffered = 0
    for image_rows, loaded in loader:
        if isinstance(loaded, Skip):
            on_skip(loaded)
            continue
        rows.append(image_rows)
        pixels.append(loaded)
        buffered += len(image_rows)
        while buffered >= batch_size:
            all_rows, all_pixels = np.concatenate(rows), torch.cat(pixels)
            yield all_rows[:batch_size], all_pixels[:batch_size]
            rows, pixels = [all_rows[batch_size:]], [all_pixels[batch_size:]]
            buffered -= batch_size
    if buffered:
        yield np.concatenate(rows), torch.cat(pixels)


def score_regions(model: torch.nn.Module, processor: ProcessorMixin, regions: pd.DataFrame,
                  image_dir: Path, *, pad_frac: float, batch_size: int, num_workers: int,
                  on_skip: Callable[[Skip], None],
                  on_rows: Callable[[int], None] | None = None) -> np.ndarray:
    """cos(crop, caption) of every row of `regions` (NaN where the image could not be read).

    `regions` needs a fresh RangeIndex and a `caption` column; `on_skip(skip)` is told of
    every unreadable image (the Skip's item is its image id).
    """
    scores = np.full(len(regions), np.nan, dtype=np.float32)
    captions = regions["caption"].tolist()
    loader = crop_loader(regions, image_dir, processor, pad_frac, num_workers)
    with oom_advice("clip_score", f"lower clip_score.batch_size (now {batch_size})"):
        for rows, pixels in crop_batches(loader, batch_size, on_skip):
            texts = [captions[i] for i in rows]
            scores[rows] = paired_cosine_pixels(model, processor, pixels, texts).numpy()
            if on_rows:
                on_rows(len(rows))
    return scores
