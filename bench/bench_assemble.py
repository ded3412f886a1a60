"""Time and peak memory of the assemble stage at COCO scale, on synthetic tables.

    python bench/bench_assemble.py                    # 5,000 and 118,287 images
    python bench/bench_assemble.py --sizes 5000 --work /tmp/assemble-bench

Writes, in the project's schemas: a full-size `instances_train2017.json` (118,287 images,
~7.3 boxes each with COCO-sized polygons, ~1% crowd: ~0.45 GB like the real file; every
run reads it whole, as a 5k run does on real COCO), then per size a `captions.parquet` (5
captions per image) and a `regions.parquet` of 50 scored candidates per image whose
phrases name COCO categories (so the ground-truth matching has matches to find), and runs
the stage's own command (`src.augment.assemble`, the repo's params.yaml) in a fresh process.
Reports wall and CPU seconds (on a shared machine the CPU time is the steadier one) and the
process's peak resident memory (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from src.augment.region_truth import COCO_SYNONYMS  # noqa: E402

COCO_IMAGES = 118_287
BOXES_PER_IMAGE = 7.3  # COCO train: 860,001 instance boxes
CANDIDATES = 50  # per image
PHRASES = 8  # per image
WIDTH, HEIGHT = 640, 480
CATEGORIES = sorted(COCO_SYNONYMS) + [f"category {i}" for i in range(80 - len(COCO_SYNONYMS))]


def write_instances(path: Path, seed: int = 0) -> None:
    """A COCO instances file, streamed to disk one record at a time."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"info": {"description": "synthetic"}, "licenses": [], "images": [')
        handle.write(", ".join(json.dumps(
            {"id": i, "file_name": f"{i:012d}.jpg", "width": WIDTH, "height": HEIGHT,
             "license": 1, "coco_url": f"http://images.cocodataset.org/train2017/{i:012d}.jpg",
             "date_captured": "2013-11-14 11:18:45", "flickr_url": ""})
            for i in range(1, COCO_IMAGES + 1)))
        handle.write('], "annotations": [')
        first, ann_id = True, 0
        for image_id in range(1, COCO_IMAGES + 1):
            for _ in range(int(BOXES_PER_IMAGE) + (rng.random() < BOXES_PER_IMAGE % 1)):
                ann_id += 1
                x, y = rng.uniform(0, WIDTH - 50), rng.uniform(0, HEIGHT - 50)
                w, h = rng.uniform(5, WIDTH - x), rng.uniform(5, HEIGHT - y)
                polygon = [round(rng.uniform(0, WIDTH), 2) for _ in range(46)]
                record = {"segmentation": [polygon], "area": round(w * h, 2),
                          "iscrowd": int(rng.random() < 0.01), "image_id": image_id,
                          "bbox": [round(v, 2) for v in (x, y, w, h)],
                          "category_id": 1 + rng.randrange(80), "id": ann_id}
                handle.write(("" if first else ", ") + json.dumps(record))
                first = False
        handle.write('], "categories": [')
        handle.write(", ".join(json.dumps({"supercategory": "thing", "id": i + 1, "name": name})
                               for i, name in enumerate(CATEGORIES)))
        handle.write("]}")


def write_tables(work: Path, num_images: int, seed: int = 0) -> tuple[Path, Path]:
    """captions.parquet and regions.parquet (with detect's and clip_score's counts) for a
    seeded sample of `num_images` images."""
    from src.augment.grounding import DETECTION_COLUMNS, DETECTION_DTYPES
    from src.data.tables import write_table

    rng = np.random.default_rng(seed)
    image_ids = np.sort(rng.choice(np.arange(1, COCO_IMAGES + 1), num_images, replace=False))
    file_names = np.array([f"{i:012d}.jpg" for i in image_ids], dtype=object)
    captions = pd.DataFrame({
        "image_id": np.repeat(image_ids, 5), "caption_id": np.arange(num_images * 5),
        "caption": "A man riding a horse next to a dog.", "file_name": np.repeat(file_names, 5)})
    captions_path = work / f"captions-{num_images}.parquet"
    captions.to_parquet(captions_path)

    n = num_images * CANDIDATES
    phrase_index = rng.integers(0, PHRASES, n)
    names = np.array([f"a {name}" for name in CATEGORIES] + ["the grass", "a sky"], dtype=object)
    phrase_of = rng.integers(0, len(names), (num_images, PHRASES))
    row_image = np.repeat(np.arange(num_images), CANDIDATES)
    x0, y0 = rng.uniform(0, WIDTH - 50, n), rng.uniform(0, HEIGHT - 50, n)
    columns = {
        "image_id": image_ids[row_image], "file_name": file_names[row_image],
        "width": WIDTH, "height": HEIGHT, "phrase": names[phrase_of[row_image, phrase_index]],
        "phrase_index": phrase_index, "pass_index": 0,
        "query_index": np.tile(np.arange(CANDIDATES), num_images),
        "box_x0": x0, "box_y0": y0, "box_x1": x0 + rng.uniform(5, 300, n),
        "box_y1": y0 + rng.uniform(5, 300, n), "box_score": rng.uniform(0.15, 0.9, n),
        "phrase_score": rng.uniform(0.15, 0.9, n)}
    regions = pd.DataFrame(columns, columns=list(DETECTION_COLUMNS)).astype(DETECTION_DTYPES)
    regions = regions.sort_values(["image_id", "phrase_index", "query_index"], ignore_index=True)
    regions["caption"] = "a photo of " + regions["phrase"]
    regions["clip_score"] = rng.uniform(0.1, 0.4, n).astype("float32")
    counts = {"detect": {"skipped": {}, "images": num_images, "images_no_detections": 0,
                         "phrases": num_images * PHRASES, "phrases_too_long": 0,
                         "candidates": n},
              "clip_score": {"skipped": {}, "small_boxes": 0, "candidates_in": n,
                             "unscored": 0, "regions": n}}
    regions_path = work / f"regions-{num_images}.parquet"
    write_table(regions, regions_path, counts)
    image_dir = work / "coco" / "train2017"  # a few real files: the stage finds the folder
    image_dir.mkdir(parents=True, exist_ok=True)
    from PIL import Image
    for name in file_names[:32]:
        Image.new("RGB", (WIDTH, HEIGHT), "gray").save(image_dir / name)
    return captions_path, regions_path


def child(argv: list[str]) -> None:
    """Run the stage command in this process; print seconds and peak RSS as JSON."""
    from src.augment.assemble import main as assemble_main
    start, cpu_start = time.perf_counter(), time.process_time()
    assemble_main(argv)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines())
    print(json.dumps({"seconds": round(seconds, 1), "cpu_seconds": round(cpu_seconds, 1),
                      "peak_rss_gib": round(int(status["VmHWM"].split()[0]) / 2**20, 2)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, COCO_IMAGES])
    parser.add_argument("--work", type=Path, help="keep the generated inputs here (reused)")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        instances = work / "coco" / "annotations" / "instances_train2017.json"
        if not instances.exists():
            instances.parent.mkdir(parents=True, exist_ok=True)
            write_instances(instances)
        for size in args.sizes:
            captions, regions = write_tables(work, size)
            out = work / f"out-{size}"
            command = [sys.executable, __file__, "--child", "--captions", str(captions),
                       "--regions", str(regions), "--coco-root", str(work / "coco"),
                       "--instances", str(instances), "--out", str(out / "train.jsonl"),
                       "--metrics", str(out / "augment.json"), "--plots-dir", str(out),
                       "--params", str(REPO / "params.yaml")]
            done = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            metrics = json.loads((out / "augment.json").read_text())
            print(json.dumps({"images": size, "candidates": size * CANDIDATES, **result,
                              "region_examples": metrics["region_examples"],
                              "gt_boxes": metrics["gt_boxes"]}), flush=True)


if __name__ == "__main__":
    main()
