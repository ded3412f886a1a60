"""Step `clip_score`: every candidate region cropped and scored with CLIP.

The DVC stage (`stages/clip_score.py`) and the seed command (`python -m
src.augment.augment_gdino_clip`) both call it, so they cannot drift apart; one module
per step, so that editing one step re-runs only its own DVC stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.augment.layout import find_image_dir
from src.augment.regions import drop_small_boxes, region_caption, score_regions
from src.data.skips import SkipCounter
from src.data.tables import read_table, write_table
from src.models.clip import load_clip
from src.models.device_policy import clip_dtype, resolve_device
from src.params import Params

logger = logging.getLogger(__name__)


def run_clip_score(params: Params, detections_path: Path, coco_root: Path, out: Path,
                   device: str) -> None:
    """CLIP cosine of every big-enough candidate's crop against its region caption.

    `device` is "auto", "cpu" or "cuda".
    """
    settings = params.clip_score
    torch_device = resolve_device(device)

    detections, metadata = read_table(detections_path)
    regions = drop_small_boxes(detections, settings.min_box_frac)
    regions["caption"] = [region_caption(settings.caption_template, p) for p in regions["phrase"]]
    image_dir = coco_root / find_image_dir(coco_root, regions["file_name"].tolist())
    model, processor = load_clip(params.clip_model_id, torch_device, clip_dtype(torch_device))

    skips = SkipCounter()
    with tqdm(total=len(regions), desc="clip_score", unit="crop") as bar:
        scores = score_regions(model, processor, regions, image_dir,
                               pad_frac=settings.crop_pad_frac, batch_size=settings.batch_size,
                               num_workers=params.detect.num_workers, on_skip=skips.add,
                               on_rows=bar.update)
    regions["clip_score"] = scores
    unscored = int(np.isnan(scores).sum())
    regions = regions[~np.isnan(scores)].reset_index(drop=True)
    stats = {"candidates_in": len(detections),
             "small_boxes": len(detections) - len(regions) - unscored,
             "unscored": unscored, "regions": len(regions), "skipped": skips.as_dict()}
    write_table(regions, out, {**metadata, "clip_score": stats})
    logger.info("scored %d / %d candidates (%d boxes under %.0f%% of the image), %s; "
                "median CLIP cosine %.3f", len(regions), len(detections), stats["small_boxes"],
                100 * settings.min_box_frac, skips.summary(),
                float(np.median(regions["clip_score"])) if len(regions) else float("nan"))
