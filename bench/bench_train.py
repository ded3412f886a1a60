"""Training throughput of the whole fine-tuning recipe (data, masking, loop), not a bare step.

    python bench/bench_train.py                  # tiny LLaVA on CPU, bsz 1/4/8, LoRA + QLoRA
    python bench/bench_train.py --size real --out bench/results/train-real.json   # on CUDA
    python bench/bench_train.py --size real --bsz 8 --grad-ckpt off   # checkpointing off

Each row runs `src.train.recipe.finetune` on synthetic demo captions for 2 x `--steps`
optimizer steps and reports the second half's tokens/s and samples/s (the loop's own
log window; the first half warms up) and, on CUDA, the peak allocated memory. On a CPU the
recipe's own thread policy applies (threads + 2 image workers fit the cores).
`--size real` builds the published LLaVA-1.5-7B architecture with random weights (~14 GB
on disk, no download) and trains at 336 px (576 image tokens), activation checkpointing on
unless `--grad-ckpt off`: LoRA in bf16, QLoRA in nf4. bench/bench_gpu.py runs these rows
as part of the whole table. Each row also reports how many layers activation checkpointing
re-ran per micro-batch (the loop's own count), and a row that asks for checkpointing but
recomputed nothing is refused: its numbers would describe a run nobody trains with.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gc
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.data.jsonl import write_examples
from src.demo.synthetic_coco import write_demo
from src.demo.tiny import build_real_models, build_tiny_models
from src.params import load_params
from src.train.data import validation_examples
from src.train.recipe import FinetuneConfig, FinetunePaths, finetune

REPO = Path(__file__).resolve().parents[1]


def _last_logged(live_dir: Path, name: str) -> float:
    with open(live_dir / "plots" / "metrics" / f"{name}.tsv", newline="") as handle:
        return float(list(csv.DictReader(handle, delimiter="\t"))[-1][name])


def write_bench_data(work: Path, num_train: int, num_val: int = 8) -> tuple[Path, Path]:
    """Demo images under work/coco and a JSONL of one full-image caption per train image;
    returns (COCO root, JSONL)."""
    coco = work / "coco"
    write_demo(coco, num_train=num_train, num_val=num_val, seed=0)
    train_file = work / "train.jsonl"
    write_examples(train_file, validation_examples(
        coco / "annotations" / "captions_train2017.json", 0,
        "Provide a one-sentence caption for the provided image.", seed=0)[0])
    return coco, train_file


def bench_row(model_dir: Path, coco: Path, train_file: Path, work: Path, *, bsz: int,
              quantized: bool, image_size: int, steps: int,
              gradient_checkpointing: bool) -> dict[str, object]:
    """One recipe run of 2 x `steps`; its last log window is the measured second half."""
    config = dataclasses.replace(
        FinetuneConfig.from_params(load_params(REPO / "params.yaml")), model_id=str(model_dir),
        image_size=image_size, batch_size=bsz, bsz=bsz, max_steps=2 * steps,
        load_in_4bit=quantized,
        gradient_checkpointing=gradient_checkpointing, val_examples=bsz,
        eval_every=10**9, save_every_minutes=10**6, log_every=steps,
        num_workers=2)
    run_dir = work / (f"{'qlora' if quantized else 'lora'}-bsz{bsz}-"
                      f"ckpt-{'on' if gradient_checkpointing else 'off'}")
    paths = FinetunePaths(train_file, coco / "train2017", coco / "annotations" /
                          "captions_val2017.json", coco / "val2017", run_dir / "lora",
                          run_dir / "checkpoints", None, run_dir / "live")
    if torch.cuda.is_available():  # the previous row's model must not count
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    metrics = finetune(config, paths, show_progress=False)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    recomputed = metrics["layer_recomputations"] / metrics["steps"]  # 1 micro-batch a step
    if gradient_checkpointing and not recomputed:
        raise RuntimeError("gradient checkpointing was requested but no layer recomputed")
    return {"mode": "QLoRA nf4" if quantized else
            ("LoRA bf16" if torch.cuda.is_available() else "LoRA fp32"),
            "bsz": bsz, "image_size": image_size, "grad_ckpt": gradient_checkpointing,
            "recomputed_layers_per_micro_batch": recomputed,
            "tokens_per_s": round(_last_logged(paths.live_dir, "tokens_per_second"), 1),
            "samples_per_s": round(_last_logged(paths.live_dir, "samples_per_second"), 2),
            "peak_gib": None if peak is None else round(peak, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--bsz", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--modes", nargs="+", choices=("lora", "qlora"), default=["lora", "qlora"])
    parser.add_argument("--steps", type=int, default=20, help="measured steps per row")
    parser.add_argument("--grad-ckpt", nargs="+", choices=("on", "off"), default=None,
                        help="activation checkpointing (default: on for real, off for tiny)")
    parser.add_argument("--out", type=Path, help="write the rows as JSON here too")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    real = args.size == "real"
    args.grad_ckpt = args.grad_ckpt or ["on" if real else "off"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = (build_real_models(work / "models", names=["llava"]) if real
                  else build_tiny_models(work / "models"))
        coco, train_file = write_bench_data(work, max(args.bsz) * args.steps * 2)
        for mode in args.modes:
            for ckpt in args.grad_ckpt:
                for bsz in args.bsz:
                    rows.append(bench_row(models["llava"], coco, train_file, work, bsz=bsz,
                                          quantized=mode == "qlora",
                                          image_size=336 if real else 32, steps=args.steps,
                                          gradient_checkpointing=ckpt == "on"))
                    print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
