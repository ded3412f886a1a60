"""Fine-tune LLaVA-1.5 with LoRA (or QLoRA) on a captions JSONL; resumes after a kill.

    python -m src.train.finetune_llava --train-file data/processed/train.jsonl \\
        --val-ann data/coco/annotations/captions_val2017.json --val-images data/coco/val2017 \\
        --output-dir models/lora --model-id llava-hf/llava-1.5-7b-hf \\
        --epochs 1 --bsz 1 --grad-accum 16 --lr 1e-4 --image-size 336 [--load-in-4bit]

The seed's command and the DVC `train` stage alike (`dvc repro train` gives the paths of
dvc.yaml). Several GPUs: `accelerate launch --num_processes N -m src.train.finetune_llava ...`.
Every knob not given on the command line comes from params.yaml (`train`, `model_id`, its
`model_revision`, `seed` for the validation captions, `caption_prompt` for the validation
prompt; `--seed` is the training seed, `train.seed`).

The batch: `--batch-size` is `train.batch_size`, the captions per optimizer step on all
processes together. The seed's `--grad-accum G` keeps its meaning: G micro-batches of
`--bsz` per process per step, i.e. `--batch-size` = bsz x G x processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

from src.params import ParamsError, load_params, override, param_type

logger = logging.getLogger(__name__)

# params.yaml keys with a flag of their last part's name (--lr sets train.lr); absent flags
# keep the params.yaml value.
VALUE_FLAGS = ("model_id", "model_revision", *(f"train.{name}" for name in (
    "seed", "epochs", "max_steps", "batch_size", "bsz", "lr", "image_size", "lora_r",
    "lora_alpha", "lora_dropout", "lora_target", "max_length", "num_workers")))
SWITCH_FLAGS = {"train.load_in_4bit": "QLoRA: nf4 base weights",
                "train.train_projector": "also train the multimodal projector"}


def _dest(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-file", type=Path, required=True, help="training JSONL")
    parser.add_argument("--val-ann", type=Path, required=True, help="COCO captions JSON")
    parser.add_argument("--val-images", type=Path, required=True, help="its image directory")
    parser.add_argument("--output-dir", type=Path, required=True, help="adapter + processor")
    parser.add_argument("--image-root", type=Path,
                        help="root of the JSONL image paths (default: the parent of "
                             "--val-images, i.e. the COCO root holding train2017/)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="resumable checkpoints (default: OUTPUT_DIR-checkpoints)")
    parser.add_argument("--metrics", type=Path, help="also write the metrics JSON here")
    parser.add_argument("--live-dir", type=Path, help="dvclive curves (default: none)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    for key in VALUE_FLAGS:
        parser.add_argument(f"--{_dest(key).replace('_', '-')}", type=param_type(key))
    parser.add_argument("--grad-accum", type=int,
                        help="micro-batches per process per step: sets --batch-size to "
                             "bsz x GRAD_ACCUM x processes")
    for key, help_text in SWITCH_FLAGS.items():
        parser.add_argument(f"--{_dest(key).replace('_', '-')}", action="store_true",
                            default=None, help=help_text)
    parser.add_argument("--skip-malformed", action="store_true",
                        help="count and skip malformed JSONL lines (and validation captions "
                             "holding special-token text) instead of failing")
    parser.add_argument("--drop-bad-masks", action="store_true",
                        help="count and drop examples failing the mask check instead of failing")
    parser.add_argument("--pad-to-square", action=argparse.BooleanOptionalAction, default=None,
                        help="pad images to a square before resizing, as LLaVA-1.5 trained")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per saved file
    if args.grad_accum is not None and args.batch_size is not None:
        raise ParamsError("command line: give --batch-size or --grad-accum, not both")
    if args.grad_accum is not None and args.grad_accum < 1:
        raise ParamsError(f"command line: --grad-accum={args.grad_accum}: must be > 0")
    params = override(load_params(args.params), {
        key: getattr(args, _dest(key))
        for key in (*VALUE_FLAGS, *SWITCH_FLAGS, "train.pad_to_square")})
    # Imported once params are valid: the ML libraries take seconds to import.
    from src.train.recipe import FinetuneConfig, FinetunePaths, finetune

    config = dataclasses.replace(FinetuneConfig.from_params(params),
                                 grad_accum=args.grad_accum,
                                 skip_malformed=args.skip_malformed,
                                 drop_bad_masks=args.drop_bad_masks)
    paths = FinetunePaths(
        train_file=args.train_file,
        image_root=args.image_root or args.val_images.parent,
        val_ann=args.val_ann,
        val_images=args.val_images,
        output_dir=args.output_dir,
        checkpoint_dir=args.checkpoint_dir or args.output_dir.with_name(
            f"{args.output_dir.name}-checkpoints"),
        metrics=args.metrics,
        live_dir=args.live_dir,
    )
    metrics = finetune(config, paths)
    throughput = metrics["tokens_per_second"]  # None: resumed at the final step, trained nothing
    logger.info("trained %d steps on %d examples: loss %.4f, val loss %.4f, %s; skipped %s "
                "-> %s", metrics["steps"], metrics["examples"], metrics["loss"],
                metrics["val_loss"],
                "no new steps" if throughput is None else f"{throughput:.0f} tokens/s",
                metrics["skipped"] or "none", args.output_dir)


if __name__ == "__main__":
    main()
