"""Step `detect`: GroundingDINO boxes for every image's own phrases, cached above a floor score.

    dvc repro detect   # python -m src.augment.detect --phrases ... (dvc.yaml)
    # data-parallel, same rows as one process (on CPU: ACCELERATE_USE_CPU=1 ... --multi_gpu):
    accelerate launch --num_processes 2 -m src.augment.detect \
        --phrases data/interim/phrases.parquet --coco-root data/coco \
        --shards-dir data/interim/detect_shards --out data/interim/detections.parquet

Resumable: finished shards in --shards-dir are kept when they belong to this run. The DVC
stage runs `main`; the seed command (`python -m src.augment.augment_gdino_clip`) calls
`run`, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.params import DEVICE_CHOICES, Params, load_params

logger = logging.getLogger(__name__)


def run(params: Params, phrases_path: Path, coco_root: Path, shards_dir: Path, out: Path,
        device: str) -> None:
    """GroundingDINO boxes for every image's own phrases, in resumable shards.

    Under `accelerate launch` each process runs its share of the pending shards and the
    main process merges them into `out`. `device` is "auto", "cpu" or "cuda".
    """
    # Imported here, once main has checked the params: the ML libraries take seconds.
    import pandas as pd
    from tqdm import tqdm
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from src.augment.grounding import detect_shards, detections_frame, plan_queries
    from src.augment.layout import find_image_dir
    from src.data.atomic import remove_stale_temps
    from src.data.shard_map import digest, map_image_shards
    from src.data.tables import write_table
    from src.models.device_policy import detector_autocast_dtype, process_group, resolve_device
    from src.models.hub import load_pretrained
    from src.models.weights import model_identity

    with process_group(resolve_device(device)) as state:
        remove_stale_temps(out.parent, out.name)
        settings = params.detect
        # Model first: its tokenizer and text limit shape the prompts.
        revision = params.detector_revision
        processor = load_pretrained(AutoProcessor.from_pretrained, params.detector_id,
                                    revision=revision)
        model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained,
                                params.detector_id, revision=revision).eval()
        identity = model_identity(params.detector_id, revision, param="detector")
        max_text_len = model.config.max_text_len
        plan = plan_queries(pd.read_parquet(phrases_path), processor.tokenizer, max_text_len)
        image_dir = coco_root / find_image_dir(coco_root, [i.file_name for i in plan.images])
        items = [(i.image_id, digest([i.file_name, list(i.phrases)])) for i in plan.images]

        model.to(state.device)

        def work(shards: list[list[int]]):
            with tqdm(total=sum(map(len, shards)), desc="detect", unit="image",
                      disable=not state.is_local_main_process) as bar:
                for indices, frame, skips in detect_shards(
                        model, processor, plan.images, shards, image_dir,
                        floor_score=settings.floor_score, batch_size=settings.batch_size,
                        num_workers=settings.num_workers, max_text_len=max_text_len,
                        autocast_dtype=detector_autocast_dtype(state.device)):
                    bar.update(len(indices))
                    yield indices, frame, skips

        # `code` names this module: run as `python -m`, its __name__ is "__main__".
        merged = map_image_shards(items, work, code="src.augment.detect",
                                  params={"floor_score": settings.floor_score},
                                  model=identity, processor=processor,
                                  image_dir=image_dir, shards_dir=shards_dir,
                                  shard_size=settings.shard_size, state=state,
                                  empty=detections_frame([]))
        if merged is None:
            return
        frame, skipped = merged
        unreadable = {i for ids in skipped.ids.values() for i in ids}
        loaded = [i for i in plan.images if i.image_id not in unreadable]
        found = set(frame["image_id"].tolist())
        stats = {"images": len(plan.images), "queries": sum(len(i.queries) for i in loaded),
                 "images_no_detections": sum(i.image_id not in found for i in loaded),
                 "candidates": len(frame), "skipped": skipped.as_dict(),
                 "phrases": plan.num_phrases, "phrases_too_long": len(plan.too_long),
                 "model": identity}
        write_table(frame, out, {"detect": stats})
        logger.info("%d candidates from %d images (%d queries, %d with no candidate), %s, "
                    "%d phrases too long", len(frame), stats["images"], stats["queries"],
                    stats["images_no_detections"], skipped.summary(), stats["phrases_too_long"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phrases", type=Path, required=True, help="phrases.parquet")
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--shards-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="detections.parquet")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(load_params(args.params), args.phrases, args.coco_root, args.shards_dir, args.out,
        args.device)


if __name__ == "__main__":
    main()
