"""Step `assemble`: thresholds, NMS and the CLIP cut into the training JSONL.

The DVC stage (`stages/assemble.py`) and the seed command (`python -m
src.augment.augment_gdino_clip`) both call it, so they cannot drift apart; one module
per step, so that editing one step re-runs only its own DVC stage.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from src.augment.box_gallery import choose_gallery, draw_boxes, grid
from src.augment.layout import find_image_dir
from src.augment.training_examples import AssembleConfig, assemble, sweep_csv, threshold_sweep
from src.data.atomic import atomic_path, atomic_write_json, atomic_write_text
from src.data.images import read_image
from src.data.jsonl import write_examples
from src.data.skips import Skip, SkipCounter
from src.data.tables import read_table
from src.params import Params

logger = logging.getLogger(__name__)


def run_assemble(params: Params, captions_path: Path, regions_path: Path, coco_root: Path,
                 out: Path, metrics_path: Path, plots_dir: Path) -> None:
    """Thresholds, NMS and the example mix -> the JSONL, its metrics, the sweep and gallery."""
    settings = params.assemble
    config = AssembleConfig(
        box_threshold=params.box_threshold, text_threshold=params.text_threshold,
        clip_threshold=params.clip_threshold, nms_iou=settings.nms_iou,
        full_prompt=settings.full_prompt, region_prompt=settings.region_prompt,
        region_format=settings.region_format, max_region_ratio=settings.max_region_ratio,
        seed=params.seed)

    captions = pd.read_parquet(captions_path)
    regions, counts = read_table(regions_path)
    image_dir_name = find_image_dir(coco_root, captions["file_name"].tolist())
    result = assemble(captions, regions, counts, config, image_dir_name)
    write_examples(out, result.examples)
    atomic_write_json(metrics_path, result.metrics)
    atomic_write_text(plots_dir / "threshold_sweep.csv",
                      sweep_csv(threshold_sweep(result.after_nms)))

    file_names = dict(zip(captions["image_id"], captions["file_name"], strict=True))
    gallery = choose_gallery(result.after_box_text, result.chosen, settings.gallery_images,
                             params.seed)
    tiles, skips = [], SkipCounter()
    for image_id, boxes in tqdm(gallery.items(), desc="gallery", unit="image"):
        image = read_image(coco_root / image_dir_name, image_id, file_names[image_id])
        if isinstance(image, Skip):
            skips.add(image)
        else:
            tiles.append(draw_boxes(image, boxes))
    with atomic_path(plots_dir / "gallery.png") as tmp:
        grid(tiles).save(tmp, format="PNG")

    m = result.metrics
    logger.info("%d full + %d region examples; regions: %d candidates -> %d box/text -> %d NMS "
                "-> %d CLIP (keep rate %.1f%%); %d images skipped; gallery of %d (%s)",
                m["full_examples"], m["region_examples"], m["candidates"], m["after_box_text"],
                m["after_nms"], m["regions_kept"], 100 * m["keep_rate"], m["images_skipped"],
                len(tiles), skips.summary())
