"""Stage `assemble`: thresholds, NMS and the example mix -> train.jsonl, metrics and pictures.

    dvc repro assemble
    dvc exp run -S clip_threshold=0.28   # re-runs this stage only

Writes the JSONL, metrics/augment.json, plots/augment/threshold_sweep.csv (regions
kept per CLIP threshold, to choose one by looking) and plots/augment/gallery.png.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from src.augment.assemble import AssembleConfig, assemble, sweep_csv, threshold_sweep
from src.augment.gallery import choose_gallery, draw_boxes, grid
from src.augment.layout import find_image_dir
from src.augment.tables import read_table
from src.data.atomic import atomic_path, atomic_write_json, atomic_write_text
from src.data.coco import resolve_image_path
from src.data.images import ImageSkip, SkipCounter, load_rgb
from src.data.jsonl import write_examples
from stages.params import load_params

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, required=True, help="captions.parquet")
    parser.add_argument("--regions", type=Path, required=True, help="regions.parquet")
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="train.jsonl")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots-dir", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    settings = params.assemble
    config = AssembleConfig(
        box_threshold=params.box_threshold, text_threshold=params.text_threshold,
        clip_threshold=params.clip_threshold, nms_iou=settings.nms_iou,
        full_prompt=settings.full_prompt, region_prompt=settings.region_prompt,
        region_format=settings.region_format, max_region_ratio=settings.max_region_ratio,
        seed=params.seed)

    captions = pd.read_parquet(args.captions)
    regions, counts = read_table(args.regions)
    image_dir_name = find_image_dir(args.coco_root, captions["file_name"].tolist())
    result = assemble(captions, regions, counts, config, image_dir_name)
    write_examples(args.out, result.examples)
    atomic_write_json(args.metrics, result.metrics)
    atomic_write_text(args.plots_dir / "threshold_sweep.csv",
                      sweep_csv(threshold_sweep(result.after_nms)))

    file_names = dict(zip(captions["image_id"], captions["file_name"], strict=True))
    gallery = choose_gallery(result.after_box_text, result.chosen, settings.gallery_images,
                             params.seed)
    tiles, skips = [], SkipCounter()
    for image_id, boxes in tqdm(gallery.items(), desc="gallery", unit="image"):
        path = resolve_image_path(args.coco_root / image_dir_name, file_names[image_id])
        try:
            tiles.append(draw_boxes(load_rgb(path), boxes))
        except ImageSkip as skip:
            skips.add(skip)
    with atomic_path(args.plots_dir / "gallery.png") as tmp:
        grid(tiles).save(tmp, format="PNG")

    m = result.metrics
    logger.info("%d full + %d region examples; regions: %d candidates -> %d box/text -> %d NMS "
                "-> %d CLIP (keep rate %.1f%%); %d images skipped; gallery of %d (%s)",
                m["full_examples"], m["region_examples"], m["candidates"], m["after_box_text"],
                m["after_nms"], m["regions_kept"], 100 * m["keep_rate"], m["images_skipped"],
                len(tiles), skips.summary())


if __name__ == "__main__":
    main()
