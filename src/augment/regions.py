"""CLIP scores of detected regions: each box's padded crop against its region caption.

The region caption is `caption_template` with "{phrase}" replaced by the grounded
phrase ("{phrase}" alone scores the bare phrase; "a photo of {phrase}" the CLIP
paper's prompt). Images are decoded once per image, cropped and preprocessed in
DataLoader workers while the model scores the previous crops; each image is a work item
of clip_score's resumable map (src/data/shard_map.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import ProcessorMixin

from src.data.boxes import BOX_COLUMNS
from src.data.images import ImageDataset, crop_box
from src.data.shard_map import digest
from src.data.skips import Skip, SkipCounter
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
class RegionImage:
    """One image's regions: the work item of clip_score's resumable map."""

    image_id: int
    file_name: str
    rows: np.ndarray  # positions in the regions table, in table order
    boxes_xyxy: np.ndarray


def region_images(regions: pd.DataFrame) -> list[RegionImage]:
    """The images of `regions` (fresh RangeIndex), in order of first appearance."""
    boxes = regions[BOX_COLUMNS].to_numpy(dtype=np.float64)
    return [RegionImage(int(image_id), str(group["file_name"].iloc[0]), group.index.to_numpy(),
                        boxes[group.index.to_numpy()])
            for image_id, group in regions.groupby("image_id", sort=False)]


def region_image_digest(image: RegionImage, captions: Sequence[str]) -> str:
    """What decides an image's scores besides the run's params and model: its path, and
    each crop's box and caption in order (so a score is matched to its row by position)."""
    return digest([image.file_name, image.boxes_xyxy.tolist(),
                   [captions[i] for i in image.rows]])


class _Crop:
    """Runs in the DataLoader workers, once per image: all its crops, preprocessed for CLIP."""

    def __init__(self, images: Mapping[int, RegionImage], processor: ProcessorMixin,
                 pad_frac: float) -> None:
        self.images = images
        self.processor = processor
        self.pad_frac = pad_frac

    def __call__(self, sample: tuple[int, Image.Image | Skip],
                 ) -> tuple[np.ndarray, torch.Tensor | Skip]:
        image_id, image = sample
        item = self.images[image_id]
        if isinstance(image, Skip):
            return item.rows, image
        crops = [crop_box(image, tuple(box), self.pad_frac) for box in item.boxes_xyxy.tolist()]
        return item.rows, image_pixels(self.processor, crops)


def crop_loader(images: Sequence[RegionImage], image_dir: Path, processor: ProcessorMixin,
                pad_frac: float, num_workers: int) -> DataLoader:
    """Per image of `images`, in order: (row positions, pixel values or the image's Skip,
    whose item is its image id)."""
    dataset = ImageDataset([(image.image_id, image.file_name) for image in images], image_dir)
    return DataLoader(dataset, batch_size=None,
                      collate_fn=_Crop({image.image_id: image for image in images}, processor,
                                       pad_frac),
                      num_workers=num_workers,
                      prefetch_factor=4 if num_workers else None)


def crop_batches(loaded: Iterable[tuple[np.ndarray, torch.Tensor | Skip]], batch_size: int,
                 on_skip: Callable[[Skip], None],
                 ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """Regroup per-image crops into batches of exactly `batch_size` (the last may be short)."""
    rows: list[np.ndarray] = []
    pixels: list[torch.Tensor] = []
    buffered = 0
    for image_rows, image_pixels_or_skip in loaded:
        if isinstance(image_pixels_or_skip, Skip):
            on_skip(image_pixels_or_skip)
            continue
        rows.append(image_rows)
        pixels.append(image_pixels_or_skip)
        buffered += len(image_rows)
        while buffered >= batch_size:
            all_rows, all_pixels = np.concatenate(rows), torch.cat(pixels)
            yield all_rows[:batch_size], all_pixels[:batch_size]
            rows, pixels = [all_rows[batch_size:]], [all_pixels[batch_size:]]
            buffered -= batch_size
    if buffered:
        yield np.concatenate(rows), torch.cat(pixels)


SCORE_DTYPES = {"image_id": "int64", "crop": "int64", "clip_score": "float32"}


def crop_numbers(regions: pd.DataFrame) -> np.ndarray:
    """Each row's position among its image's rows: with the image id, the key that joins a
    stored score to its row (the image's digest fixes its rows' order)."""
    return regions.groupby("image_id", sort=False).cumcount().to_numpy(dtype=np.int64)


def scores_frame(image_ids: np.ndarray, crops: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    """A shard's rows: (image id, crop = the row's position among its image's rows, score)."""
    return pd.DataFrame({"image_id": image_ids, "crop": crops, "clip_score": scores},
                        columns=list(SCORE_DTYPES)).astype(SCORE_DTYPES)


def score_shards(model: torch.nn.Module, processor: ProcessorMixin, regions: pd.DataFrame,
                 images: Sequence[RegionImage], shards: Sequence[Sequence[int]],
                 image_dir: Path, *, pad_frac: float, batch_size: int, num_workers: int,
                 on_rows: Callable[[int], None] | None = None,
                 ) -> Iterator[tuple[list[int], pd.DataFrame, SkipCounter]]:
    """cos(crop, caption) of every row of `shards` (lists of positions in `images`), with
    one DataLoader over them all; yields each shard's (positions, scores_frame of its
    readable images, skips by image id) when its last batch is done. Batches never cross
    a shard, so a shard's scores do not depend on which process or run computed them.

    `regions` needs a fresh RangeIndex and a `caption` column.
    """
    captions = regions["caption"].tolist()
    image_ids = regions["image_id"].to_numpy(dtype=np.int64)
    crops = crop_numbers(regions)
    scores = np.full(len(regions), np.nan, dtype=np.float32)
    loaded = iter(crop_loader([images[p] for shard in shards for p in shard], image_dir,
                              processor, pad_frac, num_workers))
    with oom_advice("clip_score", f"lower clip_score.batch_size (now {batch_size})"):
        for shard in shards:
            skips = SkipCounter()
            for rows, pixels in crop_batches(islice(loaded, len(shard)), batch_size, skips.add):
                scores[rows] = paired_cosine_pixels(model, processor, pixels,
                                                    [captions[i] for i in rows]).numpy()
                if on_rows:
                    on_rows(len(rows))
            done = np.concatenate([images[p].rows for p in shard])
            done = done[~np.isnan(scores[done])]  # an unreadable image's rows stay NaN
            yield list(shard), scores_frame(image_ids[done], crops[done], scores[done]), skips
