"""Step `clip_score`: CLIP cosine of every detected region's crop against its region caption.

    dvc repro clip_score   # python -m src.augment.clip_score --detections ... (dvc.yaml)

Keeps every candidate big enough to crop, with its score: box, text and CLIP
thresholds are applied by `assemble`, so sweeping them never re-runs CLIP. Crops are
decoded by detect.num_workers DataLoader workers (an execution knob, not a dependency).
The DVC stage runs `main`; the seed command (`python -m src.augment.augment_gdino_clip`)
calls `run`, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.params import DEVICE_CHOICES, Params, load_params

logger = logging.getLogger(__name__)


def run(params: Params, detections_path: Path, coco_root: Path, out: Path, device: str) -> None:
    """CLIP cosine of every big-enough candidate's crop against its region caption.

    `device` is "auto", "cpu" or "cuda".
    """
    # Imported here, once main has checked the params: the ML libraries take seconds.
    import numpy as np
    from tqdm import tqdm

    from src.augment.layout import find_image_dir
    from src.augment.regions import drop_small_boxes, region_caption, score_regions
    from src.data.skips import SkipCounter
    from src.data.tables import read_table, write_table
    from src.models.clip import load_clip
    from src.models.device_policy import clip_dtype, resolve_device

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=Path, required=True)
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="regions.parquet")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(load_params(args.params), args.detections, args.coco_root, args.out, args.device)


if __name__ == "__main__":
    main()
