"""A pass over the real COCO slice in ../shared/coco-mini: every image loads, phrases come out."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from src.augment import phrases as phrases_stage
from src.data.coco import load_captions, resolve_image_path
from src.data.images import load_rgb


def test_every_real_image_loads(coco_mini: Path) -> None:
    for split in ("train", "val"):
        captions = load_captions(coco_mini / f"annotations/captions_{split}2017.json")
        for image in captions.images.values():
            rgb = load_rgb(resolve_image_path(coco_mini, f"{split}2017/{image.file_name}"))
            assert rgb.mode == "RGB" and rgb.size == (image.width, image.height)


def test_phrases_stage_on_real_captions(coco_mini: Path, tmp_path: Path) -> None:
    phrases_stage.main([
        "--captions", str(coco_mini / "annotations/captions_train2017.json"),
        "--captions-out", str(tmp_path / "captions.parquet"),
        "--phrases-out", str(tmp_path / "phrases.parquet"),
    ])
    captions = pd.read_parquet(tmp_path / "captions.parquet")
    phrases = pd.read_parquet(tmp_path / "phrases.parquet")
    assert captions["image_id"].nunique() == 80 and len(captions) == 400
    assert phrases["image_id"].nunique() >= 75
    assert phrases.groupby("image_id").size().max() <= 8
    spans = phrases.apply(lambda r: r.caption[r.span_start:r.span_end].lower(), axis=1)
    assert (spans.str.split().str.join(" ") == phrases["phrase"]).all()
    assert not phrases["phrase"].isin(["top", "it", "side", "front", "each other"]).any()
