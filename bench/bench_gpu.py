"""Real-size model throughput on one GPU: GroundingDINO, CLIP, LLaVA-7B LoRA/QLoRA and generation.

Random-weight checkpoints with the exact published configs (src.models.tiny --size real),
loaded through the pipeline's own loaders, so this measures the models the pipeline runs:

    python bench/bench_gpu.py --device cuda --out bench-gpu.json
    python bench/bench_gpu.py --size tiny --device cpu      # a dry run of the script itself

Every result row is appended to --out as soon as it is measured, so a cut-off run keeps
what it finished. Forward-only timings: image decoding and preprocessing are excluded.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, GroundingDinoForObjectDetection

from bench.timing import median_seconds
from src.models.clip import embed_images, load_clip
from src.models.hub import load_pretrained
from src.models.llava import format_answer, format_prompt, load_llava, load_processor
from src.models.tiny import build_real_models, build_tiny_models
from src.train.model import LoraSettings, prepare_for_training

PHRASES = "dog. frisbee. green grass. man. red shirt. tree. park bench. blue sky."
CAPTION = "a man throws a red frisbee to a dog on the green grass of a park."
LORA = LoraSettings(r=16, alpha=32, dropout=0.05, train_projector=False,
                    target_regex=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)")


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
        record(model="grounding-dino", task="detect", batch=batch_size,
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
        record(model="clip", task="embed crops (incl. preprocessing)", batch=batch_size,
               items_per_s=round(batch_size / seconds, 1), unit="crops/s")
    _reset_peak(device)


def _llava_batch(processor, batch_size: int, with_answer: bool, device: torch.device,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    prompt = format_prompt("Provide a one-sentence caption for the provided image.")
    text = prompt + format_answer(CAPTION) if with_answer else prompt
    processor.tokenizer.padding_side = "right" if with_answer else "left"
    inputs = processor(images=_images(batch_size, (640, 480)), text=[text] * batch_size,
                       padding=True, return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    if with_answer:
        inputs["labels"] = inputs["input_ids"].clone()
    return inputs


def bench_llava_train(model_dir: Path, image_size: int, device: torch.device,
                      load_in_4bit: bool, batch_sizes: list[int], repeats: int,
                      record: Callable[..., None]) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    processor = load_processor(str(model_dir), image_size)
    model = load_llava(str(model_dir), image_size, dtype=dtype, load_in_4bit=load_in_4bit,
                       device_map=str(device) if load_in_4bit else None)
    if not load_in_4bit:
        model = model.to(device)
    model = prepare_for_training(model, LORA, gradient_checkpointing=True, quantized=load_in_4bit)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    for batch_size in batch_sizes:
        _reset_peak(device)
        inputs = _llava_batch(processor, batch_size, True, device, dtype)

        def step(inputs: dict[str, torch.Tensor] = inputs) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = model(**inputs).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        seconds = median_seconds(step, device, repeats)
        tokens = int(inputs["attention_mask"].sum())
        record(model="llava-1.5-7b", task=f"{'QLoRA nf4' if load_in_4bit else 'LoRA bf16'} step"
               " (grad ckpt)", batch=batch_size, items_per_s=round(tokens / seconds, 1),
               unit="tokens/s", samples_per_s=round(batch_size / seconds, 2),
               peak_gib=_peak_gib(device))
    _reset_peak(device)


def bench_llava_generate(model_dir: Path, image_size: int, device: torch.device,
                         batch_sizes: list[int], new_tokens: int,
                         record: Callable[..., None]) -> None:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    processor = load_processor(str(model_dir), image_size)
    model = load_llava(str(model_dir), image_size, dtype=dtype).to(device).eval()
    for batch_size in batch_sizes:
        _reset_peak(device)
        inputs = _llava_batch(processor, batch_size, False, device, dtype)
        with torch.inference_mode():
            seconds = median_seconds(lambda inputs=inputs: model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False),
                device, repeats=1)
        record(model="llava-1.5-7b", task=f"generate {new_tokens} tokens (bf16, greedy)",
               batch=batch_size, items_per_s=round(batch_size / seconds, 2), unit="images/s",
               peak_gib=_peak_gib(device))
    _reset_peak(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("bench-gpu.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="detect,clip,lora,generate,qlora")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    parts = args.parts.split(",")
    rows: list[dict[str, object]] = []

    def record(**row: object) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        args.out.write_text(json.dumps(rows, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        if args.size == "real":
            dirs = build_real_models(Path(tmp), device=args.device)
            image_size = 336
        else:
            dirs = build_tiny_models(Path(tmp))
            image_size = 32
        record(task="build random-weight checkpoints", seconds=round(time.perf_counter() - start))
        if "detect" in parts:
            bench_detector(dirs["grounding-dino"], device, dtype, [1, 8, 32], args.repeats, record)
        if "clip" in parts:
            bench_clip(dirs["clip"], device, dtype, [1, 8, 32, 256], args.repeats, record)
        if "lora" in parts:
            bench_llava_train(dirs["llava"], image_size, device, False, [1, 4, 8], args.repeats,
                              record)
        if "generate" in parts:
            bench_llava_generate(dirs["llava"], image_size, device, [1, 8, 32], 32, record)
        if "qlora" in parts:
            bench_llava_train(dirs["llava"], image_size, device, True, [1, 4, 8], args.repeats,
                              record)
    print(f"{'model':16} {'task':42} {'batch':>5} {'throughput':>18} {'peak GiB':>8}")
    for row in rows:
        if "batch" in row:
            print(f"{row['model']:16} {row['task']:42} {row['batch']:>5} "
                  f"{row['items_per_s']:>10} {row['unit']:<8} {row.get('peak_gib') or '':>8}")


if __name__ == "__main__":
    main()
