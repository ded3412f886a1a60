"""Peak memory of the training data at two dataset sizes: it must not grow with the examples.

    python bench/bench_train_memory.py                       # 10,000 and 1,000,000 examples
    python bench/bench_train_memory.py --sizes 10000 --batches 20

For each size, a synthetic JSONL (full-image and region examples with captions of 4 to 24
words, images from the demo set) is written, then a fresh process builds the training
data exactly as training does (`src.train.recipe._setup_data`: read, tokenise, mask check,
length-grouped sampler, DataLoaders) with the tiny LLaVA's tokenizer at 576 image tokens
per example (LLaVA-1.5's count), and iterates `--batches` batches of 8. It reports the
process's resident memory before the data (tokenizer loaded), its peak (VmHWM) and, at the
end, its anonymous part (heap: what cannot be dropped) and its file-mapped part (pages of
the memory-mapped sample file, which the kernel can drop and processes share).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

IMAGE_SIZE = 192  # the tiny vision tower's 8-px patches: (192 / 8)^2 = 576 image tokens
WORDS = ["a", "red", "circle", "blue", "square", "green", "triangle", "on", "the", "left",
         "right", "top", "bottom", "of", "with", "small", "large", "near", "far", "shape"]


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _examples(count: int, images: list[str], seed: int = 0) -> Iterator[object]:
    from src.data.jsonl import Example

    rng = random.Random(seed)
    for index in range(count):
        caption = " ".join(rng.choices(WORDS, k=rng.randint(4, 24))) + "."
        if index % 2:
            yield Example(f"r{index}", rng.choice(images), "region", (2.0, 2.0, 20.0, 20.0),
                          "Describe the region in one short phrase.", caption)
        else:
            yield Example(f"c{index}", rng.choice(images), "full", None,
                          "Provide a one-sentence caption for the provided image.", caption)


def child(work: Path, train_file: Path, num_batches: int) -> dict[str, object]:
    """Build the training data as training does and iterate `num_batches`; memory in MiB."""
    from src.models.llava import image_token_count, load_processor
    from src.params import load_params
    from src.train.recipe import FinetuneConfig, FinetunePaths, _setup_data

    coco = work / "coco"
    config = dataclasses.replace(
        FinetuneConfig.from_params(load_params(REPO / "params.yaml")),
        model_id=str(work / "models" / "llava"), image_size=IMAGE_SIZE, batch_size=8, bsz=8,
        val_examples=8, num_workers=0)
    processor = load_processor(config.model_id, config.image_size, config.pad_to_square)
    paths = FinetunePaths(train_file, coco, coco / "annotations" / "captions_val2017.json",
                          coco / "val2017", work / "out" / "lora", work / "out" / "checkpoints")
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    data = _setup_data(config, paths, processor, num_processes=1, process_index=0)
    setup_s = time.perf_counter() - start
    data.batches.use_epoch(0)
    tokens = 0
    for _, batch in zip(range(num_batches), data.train_loader, strict=False):
        tokens += int(batch["attention_mask"].sum())
    return {"examples": len(data.train_samples), "image_tokens": image_token_count(processor),
            "batches": num_batches, "tokens": tokens, "setup_s": round(setup_s, 1),
            "rss_before_mib": round(before / 1024),
            "peak_rss_mib": round(_status_kib("VmHWM") / 1024),
            "peak_growth_mib": round((_status_kib("VmHWM") - before) / 1024),
            "end_rss_anon_mib": round(_status_kib("RssAnon") / 1024),
            "end_rss_file_mib": round(_status_kib("RssFile") / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.batches)))
        return

    from src.data.jsonl import write_examples
    from src.demo.synthetic_coco import write_demo
    from src.demo.tiny import build_tiny_models

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_demo(work / "coco", num_train=24, num_val=8, seed=0)
        build_tiny_models(work / "models", seed=0)
        images = sorted(f"train2017/{p.name}" for p in (work / "coco" / "train2017").iterdir())
        for size in args.sizes:
            train_file = work / f"train-{size}.jsonl"
            write_examples(train_file, _examples(size, images))
            done = subprocess.run([sys.executable, __file__, "--batches", str(args.batches),
                                   "--child", str(work), str(train_file)],
                                  check=True, capture_output=True, text=True)
            print(done.stdout.strip().splitlines()[-1], flush=True)
            train_file.unlink()


if __name__ == "__main__":
    main()
