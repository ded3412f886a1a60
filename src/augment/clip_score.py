"""Step `clip_score`: CLIP cosine of every detected region's crop against its region caption.

    dvc repro clip_score   # python -m src.augment.clip_score --detections ... (dvc.yaml)
    # data-parallel, same table as one process (on CPU: ACCELERATE_USE_CPU=1 ... --multi_gpu):
    accelerate launch --num_processes 2 -m src.augment.clip_score \
        --detections data/interim/detections.parquet --coco-root data/coco \
        --shards-dir data/interim/clip_shards --out data/interim/regions.parquet

Keeps every candidate big enough to crop, with its score: box, text and CLIP
thresholds are applied by `assemble`, so sweeping them never re-runs CLIP. Resumable
per image like detect (src/data/shard_map.py): finished shards in --shards-dir are kept
when they belong to this run. The DVC stage runs `main`; the seed command (`python -m
src.augment.augment_gdino_clip`) calls `run`, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.params import DEVICE_CHOICES, Params, load_params

logger = logging.getLogger(__name__)


def run(params: Params, detections_path: Path, coco_root: Path, shards_dir: Path, out: Path,
        device: str) -> None:
    """CLIP cosine of every big-enough candidate's crop against its region caption.

    Under `accelerate launch` each process scores its share of the pending shards on its
    own device and the main process merges them into `out`. `device` is "auto", "cpu" or
    "cuda".
    """
    # Imported here, once main has checked the params: the ML libraries take seconds.
    import numpy as np
    from tqdm import tqdm

    from src.augment.layout import find_image_dir
    from src.augment.regions import (
        SCORE_DTYPES,
        crop_numbers,
        drop_small_boxes,
        region_caption,
        region_image_digest,
        region_images,
        score_shards,
        scores_frame,
    )
    from src.data.atomic import remove_stale_temps
    from src.data.shard_map import map_image_shards
    from src.data.tables import read_table, write_table
    from src.models.clip import load_clip
    from src.models.device_policy import clip_dtype, process_group, resolve_device
    from src.models.weights import model_identity

    with process_group(resolve_device(device)) as state:
        remove_stale_temps(out.parent, out.name)
        settings = params.clip_score
        detections, metadata = read_table(detections_path)
        regions = drop_small_boxes(detections, settings.min_box_frac)
        regions["caption"] = [region_caption(settings.caption_template, p)
                              for p in regions["phrase"]]
        images = region_images(regions)
        image_dir = coco_root / find_image_dir(coco_root, [i.file_name for i in images])
        model, processor = load_clip(params.clip_model_id, state.device, clip_dtype(state.device),
                                     revision=params.clip_model_revision)
        identity = model_identity(params.clip_model_id, params.clip_model_revision,
                                  param="clip_model")
        captions = regions["caption"].tolist()
        items = [(image.image_id, region_image_digest(image, captions)) for image in images]

        def work(shards: list[list[int]]):
            crops = sum(len(images[p].rows) for shard in shards for p in shard)
            with tqdm(total=crops, desc="clip_score", unit="crop",
                      disable=not state.is_local_main_process) as bar:
                yield from score_shards(model, processor, regions, images, shards, image_dir,
                                        pad_frac=settings.crop_pad_frac,
                                        batch_size=settings.batch_size,
                                        num_workers=settings.num_workers, on_rows=bar.update)

        # The caption template and min_box_frac reach each image's digest (its crops'
        # captions and boxes); batch size, workers and shard size are execution knobs.
        # `code` names this module: run as `python -m`, its __name__ is "__main__".
        merged = map_image_shards(items, work, code="src.augment.clip_score",
                                  params={"crop_pad_frac": settings.crop_pad_frac},
                                  model=identity, processor=processor,
                                  image_dir=image_dir, shards_dir=shards_dir,
                                  shard_size=settings.shard_size, state=state,
                                  empty=scores_frame(*[np.zeros(0)] * 3))
        if merged is None:
            return
        scores, skips = merged
        regions["crop"] = crop_numbers(regions)
        # Inner join in the regions' order: an unreadable image's rows have no score.
        scored = regions.merge(scores, on=list(SCORE_DTYPES)[:2], how="inner",
                               validate="one_to_one").drop(columns="crop")
        unscored = len(regions) - len(scored)
        stats = {"candidates_in": len(detections),
                 "small_boxes": len(detections) - len(regions),
                 "unscored": unscored, "regions": len(scored), "skipped": skips.as_dict(),
                 "model": identity}
        write_table(scored, out, {**metadata, "clip_score": stats})
        logger.info("scored %d / %d candidates (%d boxes under %.0f%% of the image), %s; "
                    "median CLIP cosine %.3f", len(scored), len(detections),
                    stats["small_boxes"], 100 * settings.min_box_frac, skips.summary(),
                    float(np.median(scored["clip_score"])) if len(scored) else float("nan"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detections", type=Path, required=True)
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--shards-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="regions.parquet")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(load_params(args.params), args.detections, args.coco_root, args.shards_dir, args.out,
        args.device)


if __name__ == "__main__":
    main()
