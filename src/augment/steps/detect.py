"""Step `detect`: GroundingDINO boxes for every image's own phrases, resumable shards.

The DVC stage (`stages/detect.py`) and the seed command (`python -m
src.augment.augment_gdino_clip`) both call it, so they cannot drift apart; one module
per step, so that editing one step re-runs only its own DVC stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from accelerate import Accelerator
from tqdm import tqdm
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

from src.augment.detect import autocast_dtype, plan_queries
from src.augment.layout import find_image_dir
from src.augment.shards import (
    detect_shards,
    merge_shards,
    model_fingerprint,
    pending_shards,
    remove_stray_shards,
    shard_manifest,
    split_shards,
)
from src.augment.tables import write_table
from src.data.skips import SkipCounter
from src.models.hub import load_pretrained
from src.params import Params

logger = logging.getLogger(__name__)


def run_detect(params: Params, phrases_path: Path, coco_root: Path, shards_dir: Path,
               out: Path, device: str) -> None:
    """GroundingDINO boxes for every image's own phrases, in resumable shards.

    Under `accelerate launch` each process runs its share of the pending shards and the
    main process merges them into `out`. `device` is "auto", "cpu" or "cuda".
    """
    accelerator = Accelerator(cpu=device == "cpu")

    # Model first: its tokenizer and text limit shape the prompts.
    processor = load_pretrained(AutoProcessor.from_pretrained, params.detector_id)
    model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained,
                            params.detector_id).eval()
    max_text_len = model.config.max_text_len
    plan = plan_queries(pd.read_parquet(phrases_path), processor.tokenizer, max_text_len)
    image_dir = coco_root / find_image_dir(coco_root, [i.file_name for i in plan.images])

    run = {"detector_id": params.detector_id, "detector_sha256": model_fingerprint(model),
           "floor_score": params.detect.floor_score, "max_text_len": max_text_len}
    shards = split_shards(len(plan.images), params.detect.shard_size)
    manifests = [shard_manifest(run, [plan.images[i] for i in shard]) for shard in shards]
    todo = pending_shards(shards_dir, manifests)
    accelerator.wait_for_everyone()  # all processes agree on `todo` before any shard is written
    mine = todo[accelerator.process_index::accelerator.num_processes]
    logger.info("%d images in %d shards: %d done, %d to run (%d on this process of %d)",
                len(plan.images), len(shards), len(shards) - len(todo), len(todo), len(mine),
                accelerator.num_processes)

    skips = SkipCounter()
    model.to(accelerator.device)
    with tqdm(total=sum(len(shards[s]) for s in mine), desc="detect", unit="image",
              disable=not accelerator.is_local_main_process) as bar:
        detect_shards(model, processor, plan.images, shards, mine, manifests, shards_dir,
                      image_dir, floor_score=params.detect.floor_score,
                      batch_size=params.detect.batch_size,
                      num_workers=params.detect.num_workers, max_text_len=max_text_len,
                      autocast_dtype=autocast_dtype(accelerator.device),
                      on_skip=skips.add, on_images=bar.update)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    frame, stats = merge_shards(shards_dir, manifests)
    remove_stray_shards(shards_dir, len(shards))
    stats |= {"phrases": plan.num_phrases, "phrases_too_long": len(plan.too_long)}
    write_table(frame, out, {"detect": stats})
    skipped = SkipCounter(stats["skipped"])
    logger.info("%d candidates from %d images (%d queries, %d with no candidate), %s, "
                "%d phrases too long", len(frame), stats["images"], stats["queries"],
                stats["images_no_detections"], skipped.summary(), stats["phrases_too_long"])
