"""Helpers for the train tests: a JSONL built from the demo captions, tiny-run configs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from src.data.jsonl import Example, write_examples
from src.params import load_params
from src.train.recipe import FinetuneConfig, FinetunePaths

REPO = Path(__file__).resolve().parents[1]
FULL_PROMPT = "Provide a one-sentence caption for the provided image."
REGION_PROMPT = "Describe the region in one short phrase."


def write_demo_jsonl(coco_root: Path, path: Path, *, regions: bool = True,
                     captions_per_image: int = 5) -> int:
    """Full-image examples from the demo train captions, plus one region example per shape
    (the crop of its box, captioned with its shape name) when `regions`."""
    ann_dir = coco_root / "annotations"
    captions = json.loads((ann_dir / "captions_train2017.json").read_text())
    files = {image["id"]: f"train2017/{image['file_name']}" for image in captions["images"]}
    per_image: dict[int, int] = {}
    examples = []
    for ann in sorted(captions["annotations"], key=lambda a: a["id"]):
        per_image[ann["image_id"]] = per_image.get(ann["image_id"], 0) + 1
        if per_image[ann["image_id"]] <= captions_per_image:
            examples.append(Example(f"c{ann['id']}", files[ann["image_id"]], "full", None,
                                    FULL_PROMPT, ann["caption"]))
    if regions:
        instances = json.loads((ann_dir / "instances_train2017.json").read_text())
        names = {c["id"]: c["name"] for c in instances["categories"]}
        for ann in instances["annotations"]:
            x, y, w, h = ann["bbox"]
            examples.append(Example(f"r{ann['id']}", files[ann["image_id"]], "region",
                                    (x, y, x + w, y + h), REGION_PROMPT,
                                    names[ann["category_id"]]))
    return write_examples(path, examples)


def tiny_config(llava_dir: Path, **overrides: object) -> FinetuneConfig:
    """The repo's params.yaml with the knobs a CPU run of the tiny LLaVA needs."""
    tiny = {"model_id": str(llava_dir), "image_size": 32, "batch_size": 8, "bsz": 4,
            "max_steps": 6, "lr": 1e-3, "gradient_checkpointing": False, "max_length": 128,
            "val_examples": 8, "eval_every": 3, "save_every_minutes": 0, "log_every": 1,
            "num_workers": 0}
    config = FinetuneConfig.from_params(load_params(REPO / "params.yaml"))
    return dataclasses.replace(config, **{**tiny, **overrides})


def demo_paths(coco_root: Path, train_file: Path, out_dir: Path) -> FinetunePaths:
    return FinetunePaths(
        train_file=train_file, image_root=coco_root,
        val_ann=coco_root / "annotations" / "captions_val2017.json",
        val_images=coco_root / "val2017", output_dir=out_dir / "lora",
        checkpoint_dir=out_dir / "checkpoints", metrics=out_dir / "train.json",
        live_dir=out_dir / "live")
