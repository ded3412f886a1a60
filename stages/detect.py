"""Stage `detect`: GroundingDINO boxes for every image's own phrases, cached above a floor score.

    dvc repro detect
    # data-parallel, same rows as one process (on CPU: ACCELERATE_USE_CPU=1 ... --multi_gpu):
    accelerate launch --num_processes 2 -m stages.detect --phrases data/interim/phrases.parquet \
        --coco-root data/coco --shards-dir data/interim/detect_shards \
        --out data/interim/detections.parquet

Resumable: finished shards in --shards-dir are kept when they belong to this run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
import torch
from accelerate import Accelerator
from tqdm import tqdm
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

from src.augment.detect import plan_queries
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
from src.data.images import SkipCounter
from src.models.hub import load_pretrained
from stages.params import load_params

logger = logging.getLogger(__name__)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the GPU has it, else fp16 on CUDA; full precision on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phrases", type=Path, required=True, help="phrases.parquet")
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--shards-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="detections.parquet")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    accelerator = Accelerator(cpu=args.device == "cpu")

    # Model first: its tokenizer and text limit shape the prompts.
    processor = load_pretrained(AutoProcessor.from_pretrained, params.detector_id)
    model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained,
                            params.detector_id).eval()
    max_text_len = model.config.max_text_len
    plan = plan_queries(pd.read_parquet(args.phrases), processor.tokenizer, max_text_len)
    image_dir = args.coco_root / find_image_dir(args.coco_root,
                                                [i.file_name for i in plan.images])

    run = {"detector_id": params.detector_id, "detector_sha256": model_fingerprint(model),
           "floor_score": params.detect.floor_score, "max_text_len": max_text_len}
    shards = split_shards(len(plan.images), params.detect.shard_size)
    manifests = [shard_manifest(run, [plan.images[i] for i in shard]) for shard in shards]
    todo = pending_shards(args.shards_dir, manifests)
    accelerator.wait_for_everyone()  # all processes agree on `todo` before any shard is written
    mine = todo[accelerator.process_index::accelerator.num_processes]
    logger.info("%d images in %d shards: %d done, %d to run (%d on this process of %d)",
                len(plan.images), len(shards), len(shards) - len(todo), len(todo), len(mine),
                accelerator.num_processes)

    skips = SkipCounter()
    model.to(accelerator.device)
    with tqdm(total=sum(len(shards[s]) for s in mine), desc="detect", unit="image",
              disable=not accelerator.is_local_main_process) as bar:
        detect_shards(model, processor, plan.images, shards, mine, manifests, args.shards_dir,
                      image_dir, floor_score=params.detect.floor_score,
                      batch_size=params.detect.batch_size,
                      num_workers=params.detect.num_workers, max_text_len=max_text_len,
                      autocast_dtype=autocast_dtype(accelerator.device),
                      on_skip=skips.add, on_images=bar.update)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    frame, stats = merge_shards(args.shards_dir, manifests)
    remove_stray_shards(args.shards_dir, len(shards))
    stats |= {"phrases": plan.num_phrases, "phrases_too_long": len(plan.too_long)}
    write_table(frame, args.out, {"detect": stats})
    skipped = SkipCounter({reason: len(ids) for reason, ids in stats["skipped"].items()})
    logger.info("%d candidates from %d images (%d queries, %d with no candidate), %s, "
                "%d phrases too long", len(frame), stats["images"], stats["queries"],
                stats["images_no_detections"], skipped.summary(), stats["phrases_too_long"])


if __name__ == "__main__":
    main()
