"""Stage `detect`: GroundingDINO boxes for every image's own phrases, cached above a floor score.

    dvc repro detect
    # data-parallel, same rows as one process (on CPU: ACCELERATE_USE_CPU=1 ... --multi_gpu):
    accelerate launch --num_processes 2 -m stages.detect --phrases data/interim/phrases.parquet \
        --coco-root data/coco --shards-dir data/interim/detect_shards \
        --out data/interim/detections.parquet

Resumable: finished shards in --shards-dir are kept when they belong to this run.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phrases", type=Path, required=True, help="phrases.parquet")
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--shards-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="detections.parquet")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    # Imported once params are valid: the ML libraries take seconds to import.
    from src.augment.detect import run_detect
    run_detect(params, args.phrases, args.coco_root, args.shards_dir, args.out, args.device)


if __name__ == "__main__":
    main()
