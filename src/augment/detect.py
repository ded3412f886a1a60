"""Step `detect`: GroundingDINO boxes for every image's own phrases, resumable shards.

The DVC stage (`stages/detect.py`) and the seed command (`python -m
src.augment.augment_gdino_clip`) both call it, so they cannot drift apart; one module
per step, so that editing one step re-runs only its own DVC stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from accelerate import PartialState
from tqdm import tqdm
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

from src.augment.grounding import detect_shards, detections_frame, plan_queries
from src.augment.layout import find_image_dir
from src.data.shard_map import digest, fingerprint, map_shards, model_digest, remove_stale_shards
from src.data.skips import SkipCounter
from src.data.tables import write_table
from src.models.device_policy import detector_autocast_dtype, process_group, resolve_device
from src.models.hub import load_pretrained
from src.params import Params

logger = logging.getLogger(__name__)


def run_detect(params: Params, phrases_path: Path, coco_root: Path, shards_dir: Path,
               out: Path, device: str) -> None:
    """GroundingDINO boxes for every image's own phrases, in resumable shards.

    Under `accelerate launch` each process runs its share of the pending shards and the
    main process merges them into `out`. `device` is "auto", "cpu" or "cuda".
    """
    with process_group(resolve_device(device)) as state:
        _detect(params, phrases_path, coco_root, shards_dir, out, state)


def _detect(params: Params, phrases_path: Path, coco_root: Path, shards_dir: Path, out: Path,
            state: PartialState) -> None:
    # Model first: its tokenizer and text limit shape the prompts.
    processor = load_pretrained(AutoProcessor.from_pretrained, params.detector_id)
    model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained,
                            params.detector_id).eval()
    max_text_len = model.config.max_text_len
    plan = plan_queries(pd.read_parquet(phrases_path), processor.tokenizer, max_text_len)
    image_dir = coco_root / find_image_dir(coco_root, [i.file_name for i in plan.images])
    run = fingerprint(params={"floor_score": params.detect.floor_score},
                      model=model_digest(model))
    items = [(i.image_id, digest([i.file_name, list(i.phrases)])) for i in plan.images]

    skips = SkipCounter()
    model.to(state.device)

    def work(shards: list[list[int]]):
        with tqdm(total=sum(map(len, shards)), desc="detect", unit="image",
                  disable=not state.is_local_main_process) as bar:
            yield from detect_shards(
                model, processor, plan.images, shards, image_dir,
                floor_score=params.detect.floor_score, batch_size=params.detect.batch_size,
                num_workers=params.detect.num_workers, max_text_len=max_text_len,
                autocast_dtype=detector_autocast_dtype(state.device), on_skip=skips.add,
                on_images=bar.update)

    merged = map_shards(items, work, shards_dir=shards_dir, run=run,
                        shard_size=params.detect.shard_size, state=state,
                        key_column="image_id", empty=detections_frame([]))
    if merged is None:
        return
    frame, skipped = merged
    remove_stale_shards(shards_dir, run)
    unreadable = {i for ids in skipped.ids.values() for i in ids}
    loaded = [i for i in plan.images if i.image_id not in unreadable]
    found = set(frame["image_id"].tolist())
    stats = {"images": len(plan.images), "queries": sum(len(i.queries) for i in loaded),
             "images_no_detections": sum(i.image_id not in found for i in loaded),
             "candidates": len(frame), "skipped": skipped.as_dict(),
             "phrases": plan.num_phrases, "phrases_too_long": len(plan.too_long)}
    write_table(frame, out, {"detect": stats})
    logger.info("%d candidates from %d images (%d queries, %d with no candidate), %s, "
                "%d phrases too long", len(frame), stats["images"], stats["queries"],
                stats["images_no_detections"], skipped.summary(), stats["phrases_too_long"])
