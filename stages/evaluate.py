"""Stage `evaluate` / `evaluate_base`: caption COCO val2017 and score the captions.

    dvc repro evaluate evaluate_base
    accelerate launch --multi_gpu --num_processes 8 -m stages.evaluate ...  # data-parallel

With `--adapter` it scores the fine-tuned model (LoRA merged into the base); without, the
zero-shot base model, or, when evaluate.baseline is false, writes a "disabled" stub and
empty outputs at once. A killed run resumes from its finished caption shards.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.params import load_params

logger = logging.getLogger(__name__)
DISABLED = {"baseline": "disabled"}  # what `dvc metrics show` lists for a skipped baseline


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", type=Path, help="LoRA adapter dir; omit for the base model")
    parser.add_argument("--images", type=Path, required=True, help="val2017 image directory")
    parser.add_argument("--ann", type=Path, required=True, help="captions_val2017.json")
    parser.add_argument("--instances", type=Path,
                        help="instances_val2017.json, for CHAIR (left out when absent)")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, required=True, help="COCO results JSON")
    parser.add_argument("--per-image", type=Path, required=True, help="per-image scores CSV")
    parser.add_argument("--plots-dir", type=Path, required=True, help="gets gallery.png")
    parser.add_argument("--num-workers", type=int, default=2, help="image-decoding workers")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    # Imported once params are valid: the ML libraries take seconds to import.
    import torch

    from src.eval.run import (
        EvalConfig,
        EvalOutputs,
        evaluate,
        summary,
        write_outputs,
    )
    from src.models.device_policy import process_group, resolve_device

    outputs = EvalOutputs(metrics=args.metrics, predictions=args.predictions,
                          per_image=args.per_image, gallery=args.plots_dir / "gallery.png")

    if args.adapter is None and not params.evaluate.baseline:
        write_outputs(outputs, DISABLED, {}, [], [],
                      notice="baseline disabled (evaluate.baseline=false)")
        logger.info("evaluate.baseline is false: wrote a disabled stub to %s", args.metrics)
        return

    torch.manual_seed(params.seed)
    config = EvalConfig.from_params(params, adapter_dir=args.adapter, images_dir=args.images,
                                    ann_path=args.ann, num_workers=args.num_workers,
                                    instances_path=args.instances)
    with process_group(resolve_device()) as state:
        metrics = evaluate(config, outputs, state)
    if metrics is not None:
        logger.info("%s: %s", "fine-tuned" if args.adapter else "base", summary(metrics))


if __name__ == "__main__":
    main()
