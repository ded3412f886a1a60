"""Throughput of the detect and clip_score loops, and how much of it is the models' own time.

    python -m bench.bench_augment --coco-root ../shared/coco-mini \
        --phrases data/interim/phrases.parquet --size tiny --device cpu --batch-sizes 1 8
    python -m bench.bench_augment --coco-root ../shared/coco-mini \
        --phrases data/interim/phrases.parquet --size real --device cuda --batch-sizes 1 8 32

For each batch size, the stage's loop (DataLoader workers decode and preprocess
while the model runs; candidate extraction; shard writing) is timed end to end,
then the very same batches, built beforehand in memory, go through the model
alone. ratio = loop time / forward time: 1.0 means IO and glue are fully hidden
under compute (target <= 1.15). `--size real` builds the published architectures
with random weights (scores and box counts are then not those of a trained model).
--phrases is a phrases.parquet of the phrases stage for (a subset of) the images.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from itertools import islice
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

from bench.timing import seconds
from src.augment.grounding import (
    canvas_batches,
    detect_shards,
    detection_loader,
    forward,
    plan_queries,
)
from src.augment.layout import find_image_dir
from src.augment.regions import (
    crop_batches,
    crop_loader,
    drop_small_boxes,
    region_images,
    score_shards,
)
from src.data.shard_map import write_shard
from src.demo.tiny import build_real_models, build_tiny_models
from src.models.clip import load_clip, paired_cosine_pixels
from src.models.device_policy import clip_dtype, detector_autocast_dtype
from src.models.hub import load_pretrained

MODELS = ("grounding-dino", "clip")


def models(size: str, cache_dir: Path, names: tuple[str, ...] = MODELS,
           device: str = "cpu") -> dict[str, Path]:
    """Built once per size into cache_dir (a real-size GroundingDINO takes a while; a real
    LLaVA is ~14 GB, built faster on a GPU `device`)."""
    paths = {name: cache_dir / size / name for name in names}
    missing = [name for name, path in paths.items() if not (path / "config.json").is_file()]
    if size == "tiny" and missing:
        build_tiny_models(cache_dir / size, seed=0, names=missing)
    elif missing:
        build_real_models(cache_dir / size, seed=0, names=missing, device=device)
    return paths


def bench_detect(model_dir: Path, plan_images: list, image_dir: Path, device: torch.device,
                 batch_size: int, num_workers: int, floor: float,
                 work: Path) -> tuple[dict, pd.DataFrame]:
    processor = load_pretrained(AutoProcessor.from_pretrained, model_dir)
    model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained,
                            model_dir).eval().to(device)
    dtype = detector_autocast_dtype(device)
    max_text_len = model.config.max_text_len
    shards = [list(range(start, min(start + 256, len(plan_images))))
              for start in range(0, len(plan_images), 256)]
    batches = canvas_batches(plan_images, shards, batch_size, processor.image_processor)
    prepared = list(detection_loader(plan_images, batches, image_dir, processor, max_text_len,
                                     num_workers=0))
    with torch.inference_mode():
        forward(model, prepared[0], dtype)  # warm-up: kernels, allocator, autotuning

    frames: list[pd.DataFrame] = []

    def loop() -> None:
        for shard, frame, skips in detect_shards(
                model, processor, plan_images, shards, image_dir, floor_score=floor,
                batch_size=batch_size, num_workers=num_workers, max_text_len=max_text_len,
                autocast_dtype=dtype):
            write_shard(work / f"shards-{batch_size}", "bench",
                        [(plan_images[i].image_id, "") for i in shard], frame, skips)
            frames.append(frame)

    loop_s = seconds(loop, device)

    def forwards() -> None:
        with torch.inference_mode():
            for batch in prepared:
                forward(model, batch, dtype)

    forward_s = seconds(forwards, device)
    frame = pd.concat(frames, ignore_index=True)
    return {"stage": "detect", "batch": batch_size, "items": len(plan_images),
            "unit": "images", "loop_s": round(loop_s, 3), "forward_s": round(forward_s, 3),
            "note": f"{len(frame) / len(plan_images):.0f} candidates/image, mean batch "
                    f"{len(plan_images) / len(batches):.2f}"}, frame


def bench_clip(model_dir: Path, regions: pd.DataFrame, image_dir: Path, device: torch.device,
               batch_size: int, num_workers: int, work: Path) -> dict:
    """The clip_score stage's loop (score_shards, shards of 256 images written as the stage
    writes them) against the bare CLIP forwards on the very same batches, built beforehand."""
    model, processor = load_clip(str(model_dir), device, clip_dtype(device))
    images = region_images(regions)
    shards = [list(range(start, min(start + 256, len(images))))
              for start in range(0, len(images), 256)]
    captions = regions["caption"].tolist()
    loader = iter(crop_loader([images[p] for shard in shards for p in shard], image_dir,
                              processor, 0.1, 0))
    prepared = [batch for shard in shards
                for batch in crop_batches(islice(loader, len(shard)), batch_size,
                                          on_skip=lambda skip: None)]
    paired_cosine_pixels(model, processor, prepared[0][1], [captions[i] for i in prepared[0][0]])

    def loop() -> None:
        for shard, frame, skips in score_shards(model, processor, regions, images, shards,
                                                image_dir, pad_frac=0.1, batch_size=batch_size,
                                                num_workers=num_workers):
            write_shard(work / f"clip-shards-{batch_size}", "bench",
                        [(images[p].image_id, "") for p in shard], frame, skips)

    loop_s = seconds(loop, device)

    def forwards() -> None:
        for rows, pixels in prepared:
            paired_cosine_pixels(model, processor, pixels, [captions[i] for i in rows])

    return {"stage": "clip_score", "batch": batch_size, "items": len(regions), "unit": "crops",
            "loop_s": round(loop_s, 3), "forward_s": round(seconds(forwards, device), 3),
            "note": f"{len(set(captions)) / len(images):.1f} distinct captions/image"}


def measure(paths: dict[str, Path], phrases: pd.DataFrame, coco_root: Path,
            device: torch.device, batch_sizes: list[int], clip_batch_sizes: list[int], *,
            num_workers: int, floor: float, max_crops: int, repeat: int = 1) -> list[dict]:
    """detect rows for `batch_sizes`, then clip_score rows on the first run's candidates."""
    detector_processor = load_pretrained(AutoProcessor.from_pretrained, paths["grounding-dino"])
    images = plan_queries(phrases, detector_processor.tokenizer, 256).images
    images = [dataclasses.replace(image, image_id=image.image_id + copy * 10**9)
              for copy in range(repeat) for image in images]
    image_dir = coco_root / find_image_dir(coco_root, [i.file_name for i in images])
    rows, regions = [], None
    with tempfile.TemporaryDirectory() as work:
        for batch_size in batch_sizes:
            result, frame = bench_detect(paths["grounding-dino"], images, image_dir, device,
                                         batch_size, num_workers, floor, Path(work))
            rows.append(result)
            regions = frame if regions is None else regions
        regions = drop_small_boxes(regions, 0.02).head(max_crops).reset_index(drop=True)
        regions["caption"] = regions["phrase"]
        for batch_size in clip_batch_sizes:
            rows.append(bench_clip(paths["clip"], regions, image_dir, device, batch_size,
                                   num_workers, Path(work)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--phrases", type=Path, required=True, help="a phrases.parquet")
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32],
                        help="images per GroundingDINO forward")
    parser.add_argument("--clip-batch-sizes", type=int, nargs="+", default=[64, 256],
                        help="crops per CLIP forward")
    parser.add_argument("--max-images", type=int, default=0, help="0 = all in --phrases")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run over the images this many times (as distinct image ids), so "
                             "worker start-up and cold caches weigh less, as in a real run")
    parser.add_argument("--max-crops", type=int, default=4096)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--floor", type=float, default=0.15)
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) /
                        "bench_augment_models")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    phrases = pd.read_parquet(args.phrases)
    if args.max_images:
        phrases = phrases[phrases["image_id"].isin(sorted(set(phrases["image_id"]))
                                                   [:args.max_images])]
    rows = measure(models(args.size, args.models_dir), phrases, args.coco_root, device,
                   args.batch_sizes, args.clip_batch_sizes, num_workers=args.num_workers,
                   floor=args.floor, max_crops=args.max_crops, repeat=args.repeat)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{args.threads}"
    print(f"\n{args.size} models on {name}, {args.num_workers} DataLoader workers")
    print("| stage | batch | items | loop s | forward s | throughput | loop/forward | note |\n"
          "|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['batch']} | {r['items']} | {r['loop_s']:.2f} | "
              f"{r['forward_s']:.2f} | {r['items'] / r['loop_s']:.1f} {r['unit']}/s | "
              f"{r['loop_s'] / r['forward_s']:.2f} | {r['note']} |")


if __name__ == "__main__":
    main()
