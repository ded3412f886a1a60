"""Resumable, data-parallel detection: images in fixed shards, one Parquet file per shard.

A shard's file is written atomically with a manifest (detector, its weights'
hash, floor score, the shard's images and phrases), so a re-run keeps exactly the
shards that belong to it and redoes the rest. Shards never depend on which
process ran them or on what ran before: N processes give the rows of one.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import ProcessorMixin

from src.augment.detect import (
    BatchResult,
    ImageQueries,
    detection_loader,
    detections_frame,
    image_batches,
    iter_detections,
)
from src.augment.tables import read_metadata, read_table, write_table
from src.data.skips import Skip, SkipCounter

logger = logging.getLogger(__name__)

STAT_COUNTS = ("images", "queries", "images_no_detections", "candidates")


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's config and weights: a re-built checkpoint at the same path differs."""
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode("utf-8"))
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def split_shards(num_images: int, shard_size: int) -> list[list[int]]:
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [list(range(i, min(i + shard_size, num_images)))
            for i in range(0, num_images, shard_size)]


def shard_manifest(run: dict[str, Any], images: Sequence[ImageQueries]) -> dict[str, Any]:
    """What a shard's rows depend on: the run's settings and the shard's images and phrases."""
    contents = json.dumps([[i.image_id, i.file_name, list(i.phrases)] for i in images])
    return {**run, "image_ids": [i.image_id for i in images],
            "contents_sha256": hashlib.sha256(contents.encode("utf-8")).hexdigest()}


def shard_path(shards_dir: Path, index: int) -> Path:
    return Path(shards_dir) / f"shard-{index:05d}.parquet"


def is_finished(path: Path, manifest: dict[str, Any]) -> bool:
    return path.is_file() and read_metadata(path).get("manifest") == manifest


def pending_shards(shards_dir: Path, manifests: Sequence[dict[str, Any]]) -> list[int]:
    """Shards without a finished file of this run (missing, half-written or stale)."""
    return [i for i, manifest in enumerate(manifests)
            if not is_finished(shard_path(shards_dir, i), manifest)]


def _write_shard(path: Path, images: Sequence[ImageQueries], shard: Sequence[int],
                 results: Sequence[BatchResult], manifest: dict[str, Any]) -> None:
    frame = detections_frame([r.columns for r in results if r.columns is not None])
    skipped = [s for r in results for s in r.skipped]
    found = set(frame["image_id"].tolist())
    loaded = [images[i] for i in shard if i not in {s.item for s in skipped}]
    skips = SkipCounter.of(replace(s, item=images[s.item].image_id) for s in skipped)
    stats = {"images": len(shard), "queries": sum(len(i.queries) for i in loaded),
             "images_no_detections": sum(i.image_id not in found for i in loaded),
             "candidates": len(frame), "skipped": skips.as_dict()}
    write_table(frame, path, {"manifest": manifest, "stats": stats})


def detect_shards(model: torch.nn.Module, processor: ProcessorMixin,
                  images: Sequence[ImageQueries], shards: Sequence[Sequence[int]],
                  todo: Sequence[int], manifests: Sequence[dict[str, Any]], shards_dir: Path,
                  image_dir: Path, *, floor_score: float, batch_size: int, num_workers: int,
                  max_text_len: int, autocast_dtype: torch.dtype | None = None,
                  on_skip: Callable[[Skip], None] | None = None,
                  on_images: Callable[[int], None] | None = None) -> None:
    """Detect the shards listed in `todo` (one DataLoader for all), writing each when done.

    Batches never cross a shard, so every shard's rows are the same whichever
    process runs it. `on_skip(skip)` and `on_images(count)` report progress.
    """
    plan = [(s, batch) for s in todo
            for batch in image_batches(images, shards[s], batch_size, processor.image_processor)]
    loader = detection_loader(images, [batch for _, batch in plan], image_dir, processor,
                              max_text_len, num_workers,
                              pin_memory=model.device.type == "cuda")
    remaining = {s: len(shards[s]) for s in todo}
    results: dict[int, list[BatchResult]] = {s: [] for s in todo}
    for (shard, _), result in zip(plan, iter_detections(model, images, loader, floor_score,
                                                        autocast_dtype), strict=True):
        results[shard].append(result)
        remaining[shard] -= len(result.image_indices)
        for skip in result.skipped:
            if on_skip:
                on_skip(skip)
        if on_images:
            on_images(len(result.image_indices))
        if remaining[shard] == 0:
            _write_shard(shard_path(shards_dir, shard), images, shards[shard],
                         results.pop(shard), manifests[shard])


def merge_shards(shards_dir: Path,
                 manifests: Sequence[dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """All shards' rows in shard order, and their summed counts; every shard must be finished."""
    frames, totals, skips = [], dict.fromkeys(STAT_COUNTS, 0), SkipCounter()
    for index, manifest in enumerate(manifests):
        path = shard_path(shards_dir, index)
        if not is_finished(path, manifest):
            raise RuntimeError(f"{path} is missing or belongs to another run")
        frame, metadata = read_table(path)
        frames.append(frame)
        for key in STAT_COUNTS:
            totals[key] += metadata["stats"][key]
        skips.update(SkipCounter(metadata["stats"]["skipped"]))
    frame = pd.concat(frames, ignore_index=True) if frames else detections_frame([])
    return frame, {**totals, "skipped": skips.as_dict()}


def remove_stray_shards(shards_dir: Path, num_shards: int) -> list[Path]:
    """Delete shard files numbered beyond this run's shards (left by another shard_size)."""
    stray = [p for p in sorted(Path(shards_dir).glob("shard-*.parquet"))
             if int(p.stem.split("-")[1]) >= num_shards]
    for path in stray:
        path.unlink()
    return stray
