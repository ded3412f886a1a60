"""Seed command: COCO captions -> phrases -> GroundingDINO -> CLIP -> train JSONL, in one go.

    python -m src.augment.augment_gdino_clip --coco-root data/coco --split train \
        --out data/processed/train.jsonl --max-images 500 --box-threshold 0.3 \
        --text-threshold 0.25 --clip-threshold 0.26 --device cuda

It runs the DVC stages' own steps in order (`src.augment`: phrases, detect,
clip_score, assemble) on a work folder beside --out, so it cannot drift from `dvc repro`.
Knobs not given here come from --params (params.yaml). A one-shot run serves no threshold
sweep, so where --box-threshold or --text-threshold is under `detect.floor_score`, the
floor (the lowest score detect caches) is lowered to it, and the log says so. Writes FILE.jsonl,
FILE.stats.json (the metrics of metrics/augment.json) and FILE_work/ (the params used,
tables, resumable detection shards, the gallery and the threshold sweep). Where
annotations/instances_{split}2017.json exists, the regions are measured against its boxes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import yaml

from src.data.atomic import atomic_write_text
from src.params import DEVICE_CHOICES, Params, load_params, override

logger = logging.getLogger(__name__)


def _floor_for(params: Params, box_threshold: float | None,
               text_threshold: float | None) -> float | None:
    """The cache floor lowered to the run's lowest threshold, or None where it is under both."""
    lowest = min(params.box_threshold if box_threshold is None else box_threshold,
                 params.text_threshold if text_threshold is None else text_threshold)
    if lowest >= params.detect.floor_score:
        return None
    logger.info("detect.floor_score lowered from %s to %s, the lowest threshold of this run",
                params.detect.floor_score, lowest)
    return lowest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--split", default="train", help="reads annotations/captions_{split}2017")
    parser.add_argument("--out", type=Path, required=True, help="the training JSONL")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="defaults for every knob not given below")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--box-threshold", type=float)
    parser.add_argument("--text-threshold", type=float)
    parser.add_argument("--clip-threshold", type=float)
    parser.add_argument("--detector-id")
    parser.add_argument("--clip-model-id")
    parser.add_argument("--detector-revision", help="hub commit, branch or tag of the detector")
    parser.add_argument("--clip-model-revision", help="hub commit, branch or tag of CLIP")
    parser.add_argument("--batch-size", type=int, help="images per GroundingDINO forward")
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    defaults = load_params(args.params)
    params = override(defaults, {
        "max_images": args.max_images, "box_threshold": args.box_threshold,
        "text_threshold": args.text_threshold, "clip_threshold": args.clip_threshold,
        "detector_id": args.detector_id, "clip_model_id": args.clip_model_id,
        "detector_revision": args.detector_revision,
        "clip_model_revision": args.clip_model_revision,
        "detect.batch_size": args.batch_size,
        "detect.floor_score": _floor_for(defaults, args.box_threshold, args.text_threshold)})
    # Imported once params are valid: the ML libraries take seconds to import.
    from src.augment import assemble, clip_score, detect, phrases
    from src.preflight import require_models, require_paths

    captions_path = args.coco_root / "annotations" / f"captions_{args.split}2017.json"
    require_paths(captions_path)  # and both models, before the phrases and the detector run
    require_models((params.detector_id, params.detector_revision),
                   (params.clip_model_id, params.clip_model_revision))
    work = args.out.parent / f"{args.out.stem}_work"
    atomic_write_text(work / "params.yaml",
                      yaml.safe_dump(dataclasses.asdict(params), sort_keys=False))

    phrases.run(params, captions_path, work / "captions.parquet", work / "phrases.parquet")
    detect.run(params, work / "phrases.parquet", args.coco_root, work / "detect_shards",
               work / "detections.parquet", args.device)
    clip_score.run(params, work / "detections.parquet", args.coco_root, work / "clip_shards",
                   work / "regions.parquet", args.device)
    instances = args.coco_root / "annotations" / f"instances_{args.split}2017.json"
    assemble.run(params, work / "captions.parquet", work / "regions.parquet", args.coco_root,
                 args.out, args.out.with_suffix(".stats.json"), work / "plots",
                 instances if instances.is_file() else None)


if __name__ == "__main__":
    main()
