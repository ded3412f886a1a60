"""Semantics on the demo world: with the trained tiny models, the regions the augmentation keeps
land on the shapes their phrases name, measured against the demo's instances by the assemble
stage itself; and the measurement fails when the boxes reach clip_score in a wrong frame.

The demo pictures here (seed 1) are neither the detector's or CLIP's training pictures (drawn
fresh by their own generators) nor the demo's train split the thresholds of configs/demo.yaml
were chosen on (seed 0).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stage_runs import REPO, run_assemble, run_clip, run_detect, run_phrases, write_params

from src.data.tables import read_table, write_table
from src.demo.synthetic_coco import write_demo
from src.demo.tiny import build_tiny_models
from src.demo.weights import trained_inits
from src.models.device_policy import torch_threads
from tools.overrides import load_overrides

pytestmark = pytest.mark.slow

NUM_IMAGES = 120
THRESHOLDS = ("box_threshold", "text_threshold", "clip_threshold")
BOX = ["box_x0", "box_y0", "box_x1", "box_y1"]


def _swap_xy(frame: pd.DataFrame) -> pd.DataFrame:
    frame[BOX] = frame[["box_y0", "box_x0", "box_y1", "box_x1"]].to_numpy()
    return frame


def _shift_half_a_width(frame: pd.DataFrame) -> pd.DataFrame:
    shift = (frame["box_x1"] - frame["box_x0"]) / 2
    frame["box_x0"] += shift
    frame["box_x1"] += shift
    return frame


def _as_cxcywh(frame: pd.DataFrame) -> pd.DataFrame:
    """xyxy boxes read as (cx, cy, w, h), then converted back to xyxy."""
    cx, cy, w, h = (frame[c].to_numpy() for c in BOX)
    frame[BOX] = np.column_stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return frame


def _clamped(frame: pd.DataFrame) -> pd.DataFrame:
    """Boxes clamped to their image, as the detect stage writes every box."""
    for axis, size in (("x", "width"), ("y", "height")):
        for end in (0, 1):
            frame[f"box_{axis}{end}"] = frame[f"box_{axis}{end}"].clip(0, frame[size])
    return frame


def _phrases_moved_to_other_boxes(frame: pd.DataFrame) -> pd.DataFrame:
    """Each image's boxes paired with the image's next phrase (sorted, the last with the
    first): a phrase paired with another phrase's box."""
    for _, rows in frame.groupby("image_id"):
        names = sorted(rows["phrase"].unique())
        following = dict(zip(names, names[1:] + names[:1], strict=True))
        frame.loc[rows.index, "phrase"] = rows["phrase"].map(following)
    return frame


@pytest.fixture(scope="module")
def detected(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """phrases -> detect with the trained detector on fresh demo pictures."""
    work = tmp_path_factory.mktemp("semantics")
    coco = work / "coco"
    write_demo(coco, num_train=NUM_IMAGES, num_val=0, seed=1)
    models = build_tiny_models(work / "models", seed=0, inits=trained_inits())
    demo = load_overrides([REPO / "configs" / "demo.yaml"])
    params = write_params(work / "params.yaml", models, **{k: demo[k] for k in THRESHOLDS})
    with torch_threads(1):
        run_phrases(coco, work, params)
        return coco, work, params, run_detect(coco, work, params)


@pytest.mark.parametrize("frame_error", [
    None, _swap_xy, _shift_half_a_width, _as_cxcywh, _phrases_moved_to_other_boxes],
    ids=["as-detected", "x-y-swapped", "shifted", "xyxy-read-as-cxcywh", "phrases-moved"])
def test_kept_regions_land_on_the_shapes_their_phrases_name(
        detected: tuple[Path, Path, Path, Path],
        frame_error: Callable[[pd.DataFrame], pd.DataFrame] | None) -> None:
    coco, work, params, detections = detected
    tag = frame_error.__name__ if frame_error else "as_detected"
    if frame_error is not None:
        frame, metadata = read_table(detections)
        detections = work / f"detections{tag}.parquet"
        write_table(_clamped(frame_error(frame)), detections, metadata)
    with torch_threads(1):
        regions = run_clip(coco, detections, params, work / f"regions{tag}.parquet")
        out = run_assemble(coco, work, regions, params, tag,
                           instances=coco / "annotations" / "instances_train2017.json")
    metrics = json.loads((out / "augment.json").read_text())

    assert metrics["gt_boxes"] >= NUM_IMAGES
    if frame_error is None:
        assert metrics["region_precision"] >= 0.8, metrics
        assert metrics["region_precision"] > metrics["region_precision_before_clip"], metrics
        assert metrics["gt_recall"] >= 0.6, metrics
    else:  # most boxes miss what their phrase names, and few shapes keep a region. With the
        # phrases moved, CLIP keeps mostly the boxes the detector had put on the other shape
        # (right by accident), so precision after the filter may stay high: recall may not.
        assert metrics["region_precision_before_clip"] < 0.5, metrics
        assert metrics["gt_recall"] < 0.3, metrics
