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

from src.params import load_params


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
    # Imported once params are valid: the ML libraries take seconds to import.
    from src.augment.clip_score import run_clip_score
    run_clip_score(params, args.detections, args.coco_root, args.out, args.device)


if __name__ == "__main__":
    main()
