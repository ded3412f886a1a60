"""Detect's mean batch on a COCO folder's image sizes: how full batches of one canvas get.

    python -m bench.detect_batches --coco-root ../shared/coco-mini --images 118000

The annotated sizes are repeated (as distinct image ids) to --images, dealt in shards of
--shard-size and batched as the detect stage batches them (`canvas_batches`, the real
GroundingDINO processor's canvases). Lag 0 is batching within each shard alone.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoImageProcessor

from src.augment.grounding import SHARD_LAG, ImageQueries, canvas_batches

CONFIG = Path(__file__).resolve().parents[1] / "src" / "models" / "configs" / "grounding-dino-tiny"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-root", type=Path, required=True)
    parser.add_argument("--images", type=int, default=118_000)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    annotations = args.coco_root / "annotations" / "captions_train2017.json"
    sizes = [(i["width"], i["height"]) for i in json.loads(annotations.read_text())["images"]]
    images = [ImageQueries(n, "", *sizes[n % len(sizes)], (), ()) for n in range(args.images)]
    shards = [list(range(start, min(start + args.shard_size, len(images))))
              for start in range(0, len(images), args.shard_size)]
    processor = AutoImageProcessor.from_pretrained(CONFIG)
    for lag in sorted({0, 1, SHARD_LAG, 4}):
        batches = canvas_batches(images, shards, args.batch_size, processor, lag)
        print(f"lag {lag}{' (detect)' if lag == SHARD_LAG else ''}: {len(images)} images, "
              f"{len(batches)} batches, mean batch {len(images) / len(batches):.2f} "
              f"of {args.batch_size}")


if __name__ == "__main__":
    main()
