"""Stage `clip_score`: CLIP cosine of every detected region's crop against its region caption.

    dvc repro clip_score

Keeps every candidate big enough to crop, with its score: box, text and CLIP
thresholds are applied by `assemble`, so sweeping them never re-runs CLIP. Crops are
decoded by detect.num_workers DataLoader workers (an execution knob, not a dependency).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.augment.layout import find_image_dir
from src.augment.regions import drop_small_boxes, region_caption, score_regions
from src.augment.skips import merge_skips
from src.augment.tables import read_table, write_table
from src.data.images import ImageSkip, SkipCounter
from src.models.clip import load_clip
from stages.params import load_params

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=Path, required=True)
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="regions.parquet")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    settings = params.clip_score
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")

    detections, metadata = read_table(args.detections)
    regions = drop_small_boxes(detections, settings.min_box_frac)
    regions["caption"] = [region_caption(settings.caption_template, p) for p in regions["phrase"]]
    image_dir = args.coco_root / find_image_dir(args.coco_root, regions["file_name"].tolist())
    model, processor = load_clip(params.clip_model_id, device,
                                 torch.float16 if use_cuda else torch.float32)

    skips, skipped_ids = SkipCounter(), {}

    def on_skip(skip: ImageSkip, rows: np.ndarray) -> None:
        skips.add(skip)
        skipped_ids.setdefault(skip.reason, []).append(int(regions.loc[rows[0], "image_id"]))

    with tqdm(total=len(regions), desc="clip_score", unit="crop") as bar:
        scores = score_regions(model, processor, regions, image_dir,
                               pad_frac=settings.crop_pad_frac, batch_size=settings.batch_size,
                               num_workers=params.detect.num_workers, on_skip=on_skip,
                               on_rows=bar.update)
    regions["clip_score"] = scores
    unscored = int(np.isnan(scores).sum())
    regions = regions[~np.isnan(scores)].reset_index(drop=True)
    stats = {"candidates_in": len(detections),
             "small_boxes": len(detections) - len(regions) - unscored,
             "unscored": unscored, "regions": len(regions), "skipped": merge_skips(skipped_ids)}
    write_table(regions, args.out, {**metadata, "clip_score": stats})
    logger.info("scored %d / %d candidates (%d boxes under %.0f%% of the image), %s; "
                "median CLIP cosine %.3f", len(regions), len(detections), stats["small_boxes"],
                100 * settings.min_box_frac, skips.summary(),
                float(np.median(regions["clip_score"])) if len(regions) else float("nan"))


if __name__ == "__main__":
    main()
