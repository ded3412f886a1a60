"""Stage `assemble`: thresholds, NMS and the example mix -> train.jsonl, metrics and pictures.

    dvc repro assemble
    dvc exp run -S clip_threshold=0.28   # re-runs this stage only

Writes the JSONL, metrics/augment.json, plots/augment/threshold_sweep.csv (regions
kept per CLIP threshold and, with --instances, their precision and recall against the
ground-truth boxes: choose a threshold by data) and plots/augment/gallery.png.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.params import load_params


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
    params = load_params(args.params)
    # Imported once params are valid: the ML libraries take seconds to import.
    from src.augment.assemble import run_assemble
    run_assemble(params, args.captions, args.regions, args.coco_root, args.out, args.metrics,
                 args.plots_dir, args.instances)


if __name__ == "__main__":
    main()
