"""The README's benchmark table in one command: model-level forwards, the stage loops, and
training through the real recipe, written to bench/results/<card>-<date>.json.

    python -m bench.bench_gpu --size real --device cuda          # one GPU, all parts
    python -m bench.bench_gpu --size tiny --device cpu --quick   # this script on a CPU

Parts (`--parts`, all by default), each row written as soon as it is measured (a cut-off
run keeps what it finished):

- forward: model-level forwards on inputs prepared beforehand (no data loading, no stage
  loop): GroundingDINO with 8 phrases, CLIP crop embedding with its preprocessing, LLaVA
  greedy generation of 32 tokens.
- augment: the detect and clip_score stage loops (bench/bench_augment.py): images/s and
  loop / forward per detect batch size, crops/s.
- train: LoRA and QLoRA through the whole training recipe (bench/bench_train.py):
  tokens/s and peak GiB at batch 1, 4, 8 with activation checkpointing on (a row whose
  layers were not recomputed is refused), then the fastest of those batches with it off.
- eval: the evaluate stage itself (`python -m src.eval.evaluate_coco`, base model) on
  `--eval-images` val images: decoding, preprocessing, generation to max_new_tokens and
  the metrics, model load included.

Models are random-weight checkpoints of the published architectures (`--size real`, built
on the device, LLaVA ~14 GB) or the tiny test models, built once into `--models-dir`;
images are the synthetic demo set (src/demo/synthetic_coco.py, 192-352 px) unless `--coco-root`
names a COCO-2017 layout. Where one command may run only minutes, run the parts one by
one (`--parts forward augment`, then `--parts train`, then `--parts eval`): they reuse
the built models and add their rows to the same file, replacing only their own part's.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import yaml
from PIL import Image
from transformers import AutoProcessor, GroundingDinoForObjectDetection

from bench import bench_augment
from bench.bench_train import bench_row, write_bench_data
from bench.timing import median_seconds
from src.data.atomic import atomic_write_json
from src.data.coco import load_captions
from src.demo.tiny import MODEL_NAMES
from src.models.clip import embed_images, load_clip
from src.models.hub import load_pretrained
from src.models.llava import format_prompt, load_llava, load_processor

REPO = Path(__file__).resolve().parents[1]
PHRASES = "dog. frisbee. green grass. man. red shirt. tree. park bench. blue sky."
PROMPT = "Provide a one-sentence caption for the provided image."
PACKAGES = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "tokenizers")
PARTS = ("forward", "augment", "train", "eval")


def _images(count: int, size: tuple[int, int]) -> list[Image.Image]:
    generator = torch.Generator().manual_seed(count)
    return [Image.fromarray(torch.randint(0, 255, (size[1], size[0], 3), generator=generator,
                                          dtype=torch.uint8).numpy()) for _ in range(count)]


def _peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def bench_detector(model_dir: Path, device: torch.device, dtype: torch.dtype,
                   batch_sizes: list[int], repeats: int, record: Callable[..., None]) -> None:
    processor = load_pretrained(AutoProcessor.from_pretrained, str(model_dir))
    model = load_pretrained(GroundingDinoForObjectDetection.from_pretrained, str(model_dir),
                            dtype=dtype).to(device).eval()
    for batch_size in batch_sizes:
        inputs = processor(images=_images(batch_size, (640, 480)), text=[PHRASES] * batch_size,
                           padding=True, return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with torch.inference_mode():
            seconds = median_seconds(lambda inputs=inputs: model(**inputs), device, repeats)
        record(part="forward", model="grounding-dino", task="detect forward, 8 phrases",
               batch=batch_size,
               items_per_s=round(batch_size / seconds, 1), unit="images/s",
               canvas=list(inputs["pixel_values"].shape[-2:]))
    _reset_peak(device)


def bench_clip(model_dir: Path, device: torch.device, dtype: torch.dtype, batch_sizes: list[int],
               repeats: int, record: Callable[..., None]) -> None:
    model, processor = load_clip(str(model_dir), device, dtype)
    for batch_size in batch_sizes:
        crops = _images(batch_size, (160, 120))
        seconds = median_seconds(lambda crops=crops: embed_images(model, processor, crops), device,
                         repeats)
        record(part="forward", model="clip", task="embed crops, preprocessing included",
               batch=batch_size,
               items_per_s=round(batch_size / seconds, 1), unit="crops/s")
    _reset_peak(device)


def _prompt_batch(processor, batch_size: int, device: torch.device,
                  dtype: torch.dtype) -> dict[str, torch.Tensor]:
    processor.tokenizer.padding_side = "left"
    inputs = processor(images=_images(batch_size, (640, 480)),
                       text=[format_prompt(PROMPT)] * batch_size, padding=True,
                       return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


def bench_llava_generate(model_dir: Path, image_size: int, device: torch.device,
                         batch_sizes: list[int], new_tokens: int,
                         record: Callable[..., None]) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    processor = load_processor(str(model_dir), image_size)
    model = load_llava(str(model_dir), image_size, dtype=dtype).to(device).eval()
    for batch_size in batch_sizes:
        _reset_peak(device)
        inputs = _prompt_batch(processor, batch_size, device, dtype)
        with torch.inference_mode():
            seconds = median_seconds(lambda inputs=inputs: model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False),
                device, repeats=1)
        record(part="forward", model="llava",
               task=f"generate {new_tokens} tokens (greedy)",
               batch=batch_size, items_per_s=round(batch_size / seconds, 2), unit="images/s",
               peak_gib=_peak_gib(device))
    _reset_peak(device)


def bench_augment_loops(models: dict[str, Path], coco: Path, device: torch.device,
                        batch_sizes: list[int], num_images: int, num_workers: int,
                        record: Callable[..., None]) -> None:
    """The detect and clip_score loops on the first `num_images` train images, 8 phrases
    each (the forward rows' prompt)."""
    captions = load_captions(coco / "annotations" / "captions_train2017.json")
    phrases = pd.DataFrame([
        {"image_id": image.image_id, "file_name": image.file_name, "width": image.width,
         "height": image.height, "phrase": phrase}
        for image in sorted(captions.images.values(), key=lambda i: i.image_id)[:num_images]
        for phrase in PHRASES.rstrip(".").split(". ")])
    for row in bench_augment.measure(models, phrases, coco, device, batch_sizes, [64, 256],
                                     num_workers=num_workers, floor=0.15, max_crops=4096):
        record(part="augment", **row, items_per_s=round(row["items"] / row["loop_s"], 1),
               loop_over_forward=round(row["loop_s"] / row["forward_s"], 3))


def bench_training(llava: Path, coco: Path, train_file: Path, work: Path, real: bool,
                   batch_sizes: list[int], steps: int, record: Callable[..., None]) -> None:
    """Per mode: checkpointing on at each batch size, then off at the fastest of them. A
    batch that does not fit becomes an "out of memory" row."""
    for quantized in (False, True):
        def row(bsz: int, checkpointing: bool, quantized: bool = quantized) -> dict:
            try:
                measured = bench_row(llava, coco, train_file, work, bsz=bsz,
                                     quantized=quantized, image_size=336 if real else 32,
                                     steps=steps, gradient_checkpointing=checkpointing)
            except torch.OutOfMemoryError:
                measured = {"mode": "QLoRA nf4" if quantized else "LoRA", "bsz": bsz,
                            "grad_ckpt": checkpointing, "error": "out of memory"}
            record(part="train", **measured)
            return measured

        fitting = [r for r in (row(bsz, True) for bsz in batch_sizes) if "error" not in r]
        if fitting:
            row(max(fitting, key=lambda r: r["tokens_per_s"])["bsz"], False)


def bench_eval_stage(models: dict[str, Path], coco: Path, work: Path, num_images: int,
                     batch_size: int, num_workers: int, record: Callable[..., None]) -> None:
    """`python -m src.eval.evaluate_coco` with the base model, timed end to end."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(model_id=str(models["llava"]), clip_model_id=str(models["clip"]))
    params["evaluate"].update(num_examples=num_images, batch_size=batch_size, gallery_images=0)
    params_path = work / "eval-params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    out = work / "eval"
    command = [sys.executable, "-m", "src.eval.evaluate_coco", "--images", str(coco / "val2017"),
               "--ann", str(coco / "annotations" / "captions_val2017.json"),
               "--out", str(out / "metrics.json"),
               "--predictions", str(out / "predictions.json"),
               "--per-image", str(out / "per_image.csv"),
               "--gallery", str(out / "plots" / "gallery.png"),
               "--params", str(params_path), "--num-workers", str(num_workers)]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True)
    seconds = time.perf_counter() - start
    scored = json.loads((out / "metrics.json").read_text())["n_images"]
    record(part="eval", task="evaluate stage, base model, model load included",
           images=scored, batch=batch_size, max_new_tokens=params["evaluate"]["max_new_tokens"],
           seconds=round(seconds, 1), items_per_s=round(scored / seconds, 2), unit="images/s")


def _card(device: torch.device) -> str:
    """"nvidia-h100" for "NVIDIA H100 80GB HBM3"; "cpu-x86_64" on a CPU."""
    if device.type != "cuda":
        return f"cpu-{platform.machine()}"
    return "-".join(torch.cuda.get_device_name(device).lower().split()[:2])


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True,
                              text=True).stdout.strip()

    return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain",
                                                       "--untracked-files=no") else "")


def _versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version(), "cuda": torch.version.cuda}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: few images, steps and repeats, batch 1 and 2")
    parser.add_argument("--coco-root", type=Path, help="a COCO-2017 layout (default: demo)")
    parser.add_argument("--eval-images", type=int, default=5000)
    parser.add_argument("--eval-batch-size", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=4,
                        help="image-decoding workers of the stage loops")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) /
                        "bench_models", help="built checkpoints, kept for the next run")
    parser.add_argument("--out", type=Path, help="default bench/results/<card>-<date>.json; "
                        "rows of the parts not re-run are kept")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    real = args.size == "real"
    quick = args.quick
    detect_batches = [1, 2] if quick else [8, 32]
    train_batches = [1, 2] if quick else [1, 4, 8]
    eval_images = 8 if quick else args.eval_images
    card = _card(device)
    out = args.out or REPO / "bench" / "results" / (
        f"{card}{'' if real else '-tiny'}-{datetime.date.today().isoformat()}.json")
    kept = json.loads(out.read_text())["rows"] if out.is_file() else []
    report = {"card": card, "size": args.size, "device": str(device),
              "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "commit": _commit(), "versions": _versions(), "command": sys.argv,
              "rows": [row for row in kept if row["part"] not in args.parts]}

    def record(**row: object) -> None:
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        atomic_write_json(out, report)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        models = bench_augment.models(args.size, args.models_dir, MODEL_NAMES, args.device)
        record(part="setup", task="build (or reuse) random-weight checkpoints",
               seconds=round(time.perf_counter() - start))
        image_size = 336 if real else 32
        demo, train_file = write_bench_data(work, num_train=max(train_batches) * 40,
                                            num_val=eval_images)
        coco = args.coco_root or demo
        if "forward" in args.parts:
            repeats = 1 if quick else 3
            bench_detector(models["grounding-dino"], device, dtype,
                           sorted({1, *detect_batches}), repeats, record)
            bench_clip(models["clip"], device, dtype, [1, 8, 32, 256], repeats, record)
            bench_llava_generate(models["llava"], image_size, device, [1, 2] if quick
                                 else [1, 8, 32], 32, record)
        if "augment" in args.parts:
            bench_augment_loops(models, coco, device, detect_batches, 4 if quick else 512,
                                args.num_workers, record)
        if "train" in args.parts:
            bench_training(models["llava"], demo, train_file, work, real, train_batches,
                           2 if quick else 20, record)
        if "eval" in args.parts:
            bench_eval_stage(models, coco, work, eval_images, 2 if quick
                             else args.eval_batch_size, args.num_workers, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
