"""Step `assemble`: thresholds, NMS and the example mix -> train.jsonl, metrics and pictures.

    dvc repro assemble   # python -m src.augment.assemble --captions ... (dvc.yaml)
    dvc exp run -S clip_threshold=0.28   # re-runs this stage only

Writes the JSONL, metrics/augment.json, plots/augment/threshold_sweep.csv (regions
kept per CLIP threshold and, with --instances, their precision and recall against the
ground-truth boxes: choose a threshold by data) and plots/augment/gallery.png. The DVC
stage runs `main`; the seed command (`python -m src.augment.augment_gdino_clip`) calls
`run`, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from src.params import Params, load_params

if TYPE_CHECKING:
    from src.data.skips import SkipCounter

logger = logging.getLogger(__name__)


def read_unread(image_dir: Path, file_names: dict[int, str],
                image_ids: list[int]) -> SkipCounter:
    """Read each image no earlier step opened, so that only readable images reach the JSONL
    (an image without phrases never meets detect); returns the skips."""
    from tqdm import tqdm

    from src.data.images import read_image
    from src.data.skips import Skip, SkipCounter

    skips = SkipCounter()
    for image_id in tqdm(image_ids, desc="read images without candidates", unit="image"):
        image = read_image(image_dir, image_id, file_names[image_id])
        if isinstance(image, Skip):
            skips.add(image)
    return skips


def run(params: Params, captions_path: Path, regions_path: Path, coco_root: Path, out: Path,
        metrics_path: Path, plots_dir: Path, instances_path: Path | None = None) -> None:
    """Thresholds, NMS and the example mix -> the JSONL, its metrics, the sweep and gallery.

    With COCO instance boxes (`instances_path`), the metrics and the sweep also measure the
    regions against them (src/augment/region_truth.py) and the gallery draws them.
    """
    # Imported here, once main has checked the params: the ML libraries take seconds.
    import pandas as pd
    from tqdm import tqdm

    from src.augment.box_gallery import choose_gallery, draw_boxes, grid, truth_boxes
    from src.augment.layout import find_image_dir
    from src.augment.region_truth import truth_metrics, truth_sweep, truth_table
    from src.augment.training_examples import (
        CANDIDATE_COLUMNS,
        NARROW_COLUMNS,
        AssembleConfig,
        assemble,
        threshold_sweep,
        unread_images,
    )
    from src.data.atomic import atomic_path, atomic_write_json, atomic_write_text
    from src.data.coco import load_instances
    from src.data.images import read_image
    from src.data.jsonl import write_examples
    from src.data.skips import Skip, SkipCounter
    from src.data.tables import read_table, release_unused

    settings = params.assemble
    config = AssembleConfig(
        box_threshold=params.box_threshold, text_threshold=params.text_threshold,
        clip_threshold=params.clip_threshold, nms_iou=settings.nms_iou,
        full_prompt=params.caption_prompt, region_prompt=settings.region_prompt,
        region_format=settings.region_format, max_region_ratio=settings.max_region_ratio,
        seed=params.seed)

    captions = pd.read_parquet(captions_path)
    regions, counts = read_table(regions_path, categorical=["file_name", "phrase", "caption"],
                                 columns=CANDIDATE_COLUMNS, narrow=NARROW_COLUMNS)
    image_dir_name = find_image_dir(coco_root, captions["file_name"].tolist())
    file_names = dict(zip(captions["image_id"], captions["file_name"], strict=True))
    unread = read_unread(coco_root / image_dir_name, file_names,
                         unread_images(captions, regions, counts))
    result = assemble(captions, regions, counts, config, image_dir_name, unread.ids)
    del regions  # the candidate table: millions of rows at COCO scale, done with
    release_unused()
    write_examples(out, result.examples())
    sweep = threshold_sweep(result.after_nms)
    metrics, truth = result.metrics, None
    if instances_path is not None:
        truth = truth_table(load_instances(instances_path, result.image_ids))
        metrics = metrics | truth_metrics(result.after_nms, result.chosen, truth)
        sweep = pd.concat([sweep, truth_sweep(result.after_nms, truth, sweep["clip_threshold"])],
                          axis=1)
    atomic_write_json(metrics_path, metrics)
    atomic_write_text(plots_dir / "threshold_sweep.csv", sweep.to_csv(index=False))

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, required=True, help="captions.parquet")
    parser.add_argument("--regions", type=Path, required=True, help="regions.parquet")
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="train.jsonl")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots-dir", type=Path, required=True)
    parser.add_argument("--instances", type=Path,
                        help="COCO instances JSON: measure the regions against its boxes")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(load_params(args.params), args.captions, args.regions, args.coco_root, args.out,
        args.metrics, args.plots_dir, args.instances)


if __name__ == "__main__":
    main()
