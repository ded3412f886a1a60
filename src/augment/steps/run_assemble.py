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

from src.augment.box_gallery import choose_gallery, draw_boxes, grid, truth_boxes
from src.augment.layout import find_image_dir
from src.augment.region_truth import truth_metrics, truth_sweep, truth_table
from src.augment.training_examples import AssembleConfig, assemble, threshold_sweep
from src.data.atomic import atomic_path, atomic_write_json, atomic_write_text
from src.data.coco import load_instances
from src.data.images import read_image
from src.data.jsonl import write_examples
from src.data.skips import Skip, SkipCounter
from src.data.tables import read_table
from src.params import Params

logger = logging.getLogger(__name__)


def run_assemble(params: Params, captions_path: Path, regions_path: Path, coco_root: Path,
                 out: Path, metrics_path: Path, plots_dir: Path,
                 instances_path: Path | None = None) -> None:
    """Thresholds, NMS and the example mix -> the JSONL, its metrics, the sweep and gallery.

    With COCO instance boxes (`instances_path`), the metrics and the sweep also measure the
    regions against them (src/augment/region_truth.py) and the gallery draws them.
    """
    settings = params.assemble
    config = AssembleConfig(
        box_threshold=params.box_threshold, text_threshold=params.text_threshold,
        clip_threshold=params.clip_threshold, nms_iou=settings.nms_iou,
        full_prompt=settings.full_prompt, region_prompt=settings.region_prompt,
        region_format=settings.region_format, max_region_ratio=settings.max_region_ratio,
        seed=params.seed)

    captions = pd.read_parquet(captions_path)
    regions, counts = read_table(regions_path, categorical=["file_name", "phrase", "caption"])
    image_dir_name = find_image_dir(coco_root, captions["file_name"].tolist())
    result = assemble(captions, regions, counts, config, image_dir_name)
    del regions  # the candidate table: millions of rows at COCO scale, done with
    write_examples(out, result.examples)
    sweep = threshold_sweep(result.after_nms)
    metrics, truth = result.metrics, None
    if instances_path is not None:
        truth = truth_table(load_instances(instances_path, result.image_ids))
        metrics = metrics | truth_metrics(result.after_nms, result.chosen, truth)
        sweep = pd.concat([sweep, truth_sweep(result.after_nms, truth, sweep["clip_threshold"])],
                          axis=1)
    atomic_write_json(metrics_path, metrics)
    atomic_write_text(plots_dir / "threshold_sweep.csv", sweep.to_csv(index=False))

    file_names = dict(zip(captions["image_id"], captions["file_name"], strict=True))
    gallery = choose_gallery(result.after_box_text, result.chosen, settings.gallery_images,
                             params.seed)
    tiles, skips = [], SkipCounter()
    for image_id, boxes in tqdm(gallery.items(), desc="gallery", unit="image"):
        image = read_image(coco_root / image_dir_name, image_id, file_names[image_id])
        if isinstance(image, Skip):
            skips.add(image)
        else:
            tiles.append(draw_boxes(image, boxes, truth_boxes(truth, image_id)))
    with atomic_path(plots_dir / "gallery.png") as tmp:
        grid(tiles).save(tmp, format="PNG")

    m = metrics
    logger.info("%d full + %d region examples; regions: %d candidates -> %d box/text -> %d NMS "
                "-> %d CLIP (keep rate %.1f%%); %d images skipped; gallery of %d (%s)",
                m["full_examples"], m["region_examples"], m["candidates"], m["after_box_text"],
                m["after_nms"], m["regions_kept"], 100 * m["keep_rate"], m["images_skipped"],
                len(tiles), skips.summary())
    if truth is not None:
        logger.info("against %d ground-truth boxes: %s", len(truth), ", ".join(
            f"{k} {v}" for k, v in metrics.items() if "precision" in k or "recall" in k))
