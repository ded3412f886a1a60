"""Stage `train`: LoRA fine-tune LLaVA-1.5 on the assembled JSONL; resumes after a kill.

    dvc repro train
    accelerate launch --num_processes N -m stages.train ...   (the dvc.yaml arguments)
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from src.params import load_params

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("train-file", "image-root", "val-ann", "val-images", "output-dir",
                 "checkpoint-dir", "metrics", "live-dir"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--num-workers", type=int, default=2, help="image-decoding workers")
    parser.add_argument("--skip-malformed", action="store_true",
                        help="count and skip malformed JSONL lines instead of failing")
    parser.add_argument("--drop-bad-masks", action="store_true",
                        help="count and drop examples failing the mask check instead of failing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file

    params = load_params(args.params)
    # Imported once params are valid: the ML libraries take seconds to import.
    from src.train.recipe import FinetuneConfig, FinetunePaths, finetune

    config = dataclasses.replace(FinetuneConfig.from_params(params), num_workers=args.num_workers,
                                 skip_malformed=args.skip_malformed,
                                 drop_bad_masks=args.drop_bad_masks)
    paths = FinetunePaths(args.train_file, args.image_root, args.val_ann, args.val_images,
                          args.output_dir, args.checkpoint_dir, args.metrics, args.live_dir)
    metrics = finetune(config, paths)
    throughput = metrics["tokens_per_second"]  # None: resumed at the final step, trained nothing
    logger.info("trained %d steps on %d examples: loss %.4f, val loss %.4f, %s; skipped %s",
                metrics["steps"], metrics["examples"], metrics["loss"], metrics["val_loss"],
                "no new steps" if throughput is None else f"{throughput:.0f} tokens/s",
                metrics["skipped"] or "none")


if __name__ == "__main__":
    main()
