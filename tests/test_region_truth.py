"""Regions measured against ground-truth boxes: hand-made rows, then the assemble stage on the
demo world's own instance boxes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from src.augment.assemble import main as assemble_main
from src.augment.region_truth import match_truth, named_categories, truth_metrics, truth_sweep
from src.data import coco
from src.data.coco import SchemaError, load_captions, load_instances
from src.data.tables import write_table

REGION_COLUMNS = ["image_id", "phrase", "box_x0", "box_y0", "box_x1", "box_y1", "clip_score"]
TRUTH = pd.DataFrame([  # image 1: a red circle and a blue square; image 2: two persons
    (1, "red circle", 0, 0, 10, 10), (1, "blue square", 20, 20, 30, 30),
    (2, "person", 0, 0, 10, 20), (2, "person", 50, 0, 60, 20),
], columns=["image_id", "category", "box_x0", "box_y0", "box_x1", "box_y1"])
REGIONS = pd.DataFrame([
    (1, "large red circle", 1, 0, 11, 10, 0.9),  # IoU 90/110: right
    (1, "large red circle", 20, 20, 30, 30, 0.5),  # the blue square's box: wrong
    (1, "small blue square", 20, 20, 30, 30, 0.8),  # right
    (1, "white background", 0, 0, 40, 40, 0.1),  # names nothing: wrong
    (2, "a young man", 50, 0, 60, 30, 0.7),  # IoU 200/300 with the second person: right
    (3, "red circle", 0, 0, 10, 10, 0.9),  # no ground truth for image 3: wrong
], columns=REGION_COLUMNS)


@pytest.mark.parametrize(("phrase", "named"), [
    ("large red circle", {"red circle"}),
    ("red circles", {"red circle"}),
    ("circle", set()),  # "red circle" is more than its head
    ("two brown dogs", {"dog"}),
    ("a young man", {"person"}),
    ("the wooden dining table", {"dining table"}),
    ("a hot dog", {"hot dog", "dog"}),
    ("dog bed", {"bed"}),
])
def test_a_phrase_names_categories_by_its_last_words(phrase: str, named: set[str]) -> None:
    categories = ["red circle", "blue circle", "dog", "hot dog", "person", "dining table", "bed"]
    assert named_categories(phrase, categories) == named


def test_match_by_hand() -> None:
    match = match_truth(REGIONS, TRUTH)
    assert match.correct.tolist() == [True, False, True, False, True, False]
    assert match.cover_score.tolist() == [0.9, 0.8, float("-inf"), 0.7]


EDGE_TRUTH = pd.DataFrame([
    (5, "dog", 0, 0, 10, 10),  # 0
    (5, "dog", 0, 0, 10, 10),  # 1: the same box twice
    (5, "hot dog", 0, 0, 10, 10),  # 2: "hot dog" also names "dog"
    (5, "cat", 100, 100, 100, 110),  # 3: zero width: IoU 0 with anything, even itself
    (6, "dog", 0, 0, 10, 10),  # 4: image 6 has no region
], columns=["image_id", "category", "box_x0", "box_y0", "box_x1", "box_y1"])
EDGE_REGIONS = pd.DataFrame([
    (5, "a dog", 0, 0, 10, 20, 0.4),  # IoU exactly 100/200 = 0.5 with 0, 1: right (inclusive)
    (5, "a hot dog", 0, 0, 10, 10, 0.6),  # covers 0, 1 and 2, the best score on each
    (5, "two dogs", 0, 0, 10, 20, 0.6),  # ties 0.6 on 0 and 1: the max is 0.6 either way
    (5, "the dog", 0, 0, 11, 20, 0.9),  # IoU 100/220 < 0.5: wrong, whatever its score
    (5, "a cat", 100, 100, 100, 110, 0.9),  # the zero-width box on itself: wrong
    (7, "a dog", 0, 0, 10, 10, 0.9),  # image 7 has no truth
], columns=REGION_COLUMNS)


def test_match_edge_cases_by_hand() -> None:
    """Inclusive IoU 0.5, duplicate truth boxes, a phrase naming two categories, tied
    scores, a zero-area box, images on one side only; and the empty tables."""
    match = match_truth(EDGE_REGIONS, EDGE_TRUTH)
    assert match.correct.tolist() == [True, True, True, False, False, False]
    assert match.cover_score.tolist() == [0.6, 0.6, 0.6, float("-inf"), float("-inf")]
    none = match_truth(EDGE_REGIONS.head(0), EDGE_TRUTH)
    assert none.correct.tolist() == [] and (none.cover_score == float("-inf")).all()
    no_truth = match_truth(EDGE_REGIONS, EDGE_TRUTH.head(0))
    assert no_truth.correct.tolist() == [False] * 6 and no_truth.cover_score.tolist() == []


def test_metrics_before_and_after_the_filter() -> None:
    exact = TRUTH[TRUTH["image_id"] == 1]
    kept = REGIONS[(REGIONS["clip_score"] >= 0.6) & (REGIONS["image_id"] == 1)]
    assert truth_metrics(REGIONS[REGIONS["image_id"] == 1], kept, exact) == {
        "region_precision_before_clip": 0.5, "region_precision": 1.0, "gt_recall": 1.0,
        "gt_boxes": 2}
    # Two persons in one image: a match is only category-level, and named so.
    assert truth_metrics(REGIONS, REGIONS.head(0), TRUTH) == {
        "category_region_precision_before_clip": 0.5, "category_region_precision": None,
        "category_gt_recall": 0.0, "gt_boxes": 4}


def test_sweep_by_hand() -> None:
    sweep = truth_sweep(REGIONS, TRUTH, [0.0, 0.6, 0.85, 0.95])
    assert sweep.fillna(-1).to_dict("list") == {"region_precision": [0.5, 0.75, 0.5, -1],
                                                "gt_recall": [0.75, 0.75, 0.25, 0.0]}


def test_instances_are_xyxy_pixels_and_schema_errors_name_the_field(tmp_path: Path) -> None:
    payload = {"categories": [{"id": 7, "name": "dog"}], "annotations": [
        {"image_id": 1, "category_id": 7, "bbox": [10, 20, 30, 40], "iscrowd": 0},
        {"image_id": 1, "category_id": 7, "bbox": [0, 0, 99, 99], "iscrowd": 1}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(payload))
    [dog] = load_instances(path)
    assert (dog.image_id, dog.category, dog.box_xyxy) == (1, "dog", (10, 20, 40, 60))
    payload["annotations"][0]["bbox"] = [1, 2, 3]
    path.write_text(json.dumps(payload))
    with pytest.raises(SchemaError, match=r"annotations\[0\]: field 'bbox'"):
        load_instances(path)


def test_instances_stream_in_small_reads_and_keep_the_sampled_images(
        demo_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Read 7 characters at a time (every value cut somewhere), the boxes equal a whole-file
    parse's; `image_ids` keeps those images' boxes only; with `categories` written last, as
    COCO does, an unknown category is still named with its annotation."""
    path = demo_coco / "annotations" / "instances_train2017.json"
    payload = json.loads(path.read_text())
    names = {c["id"]: c["name"] for c in payload["categories"]}
    expected = [(a["image_id"], names[a["category_id"]],
                 (float(x), float(y), float(x) + float(w), float(y) + float(h)))
                for a in payload["annotations"] for x, y, w, h in [a["bbox"]]]
    monkeypatch.setattr(coco, "READ_CHUNK", 7)
    got = [(i.image_id, i.category, i.box_xyxy) for i in load_instances(path)]
    assert got == expected and len(got) > 20
    sampled = {expected[0][0], expected[-1][0]}
    assert [(i.image_id, i.category, i.box_xyxy)
            for i in load_instances(path, sampled)] == [e for e in expected if e[0] in sampled]
    last = {"annotations": payload["annotations"][:3], "categories": payload["categories"]}
    last["annotations"][2] = {**last["annotations"][2], "category_id": 999}
    (tmp_path / "last.json").write_text(json.dumps(last, indent=1))
    with pytest.raises(SchemaError, match=r"annotations\[2\]: field 'category_id' 999"):
        load_instances(tmp_path / "last.json", set())
    (tmp_path / "cut.json").write_text(json.dumps(last)[:-30])
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_instances(tmp_path / "cut.json")


def _demo_regions(demo_coco: Path, shift: float, swap_xy: bool) -> pd.DataFrame:
    """One region per true box with the phrase its captions use, plus one decoy per image:
    another image's shape on an empty corner, low CLIP score. `shift` (a fraction of the box
    width) and `swap_xy` break the boxes' frame on purpose."""
    captions = load_captions(demo_coco / "annotations" / "captions_train2017.json")
    truth = json.loads((demo_coco / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in truth["categories"]}
    rows = []
    for index, ann in enumerate(truth["annotations"]):
        x, y, w, h = ann["bbox"]
        box = (x + shift * w, y, x + shift * w + w, y + h)
        if swap_xy:
            box = (box[1], box[0], box[3], box[2])
        image = captions.images[ann["image_id"]]
        phrase = f"{ann['attributes']['size']} {names[ann['category_id']]}"
        rows.append((ann["image_id"], index, 0, phrase, *box, 0.9, image))
        rows.append((ann["image_id"], index, 1, "small purple banana", 0, 0, 4, 4, 0.1, image))
    frame = pd.DataFrame(rows, columns=["image_id", "phrase_index", "query_index", "phrase",
                                        "box_x0", "box_y0", "box_x1", "box_y1", "clip_score",
                                        "image"])
    frame["file_name"] = [i.file_name for i in frame.pop("image")]
    frame["caption"] = frame["phrase"]
    frame["width"], frame["height"] = 100, 100
    frame["box_score"] = frame["phrase_score"] = 0.5
    return frame


@pytest.mark.parametrize(("shift", "swap_xy", "precision"), [
    (0.0, False, 1.0), (0.5, False, 0.0), (0.0, True, None)])
def test_assemble_stage_measures_regions_on_the_demo_truth(
        demo_coco: Path, tmp_path: Path, shift: float, swap_xy: bool,
        precision: float | None) -> None:
    captions = load_captions(demo_coco / "annotations" / "captions_train2017.json")
    sampled = sorted(captions.images)[:20]  # as max_images would: the other 4 have no truth
    pd.DataFrame([{"image_id": c.image_id, "caption_id": c.caption_id, "caption": c.caption,
                   "file_name": captions.images[c.image_id].file_name}
                  for c in captions.captions if c.image_id in sampled]
                 ).to_parquet(tmp_path / "captions.parquet")
    regions = _demo_regions(demo_coco, shift, swap_xy)
    regions = regions[regions["image_id"].isin(sampled)].reset_index(drop=True)
    counts = {"detect": {"skipped": {}, "images": 24, "images_no_detections": 0, "phrases": 0,
                         "phrases_too_long": 0, "candidates": len(regions)},
              "clip_score": {"skipped": {}, "small_boxes": 0}}
    write_table(regions, tmp_path / "regions.parquet", counts)
    params = tmp_path / "params.yaml"
    params.write_text(Path("params.yaml").read_text()  # the decoys overlap: no NMS
                      .replace("clip_threshold: 0.26", "clip_threshold: 0.5")
                      .replace("nms_iou: 0.7", "nms_iou: 1.0"))
    assemble_main(["--captions", str(tmp_path / "captions.parquet"),
                   "--regions", str(tmp_path / "regions.parquet"),
                   "--coco-root", str(demo_coco),
                   "--instances", str(demo_coco / "annotations" / "instances_train2017.json"),
                   "--out", str(tmp_path / "train.jsonl"), "--metrics", str(tmp_path / "m.json"),
                   "--plots-dir", str(tmp_path / "plots"), "--params", str(params)])
    metrics = json.loads((tmp_path / "m.json").read_text())
    boxes = len(regions) // 2
    if precision is None:  # x and y swapped: square images stay right, the others go wrong
        assert 0.0 < metrics["region_precision"] < 0.5
    else:
        assert metrics["region_precision"] == precision
        assert metrics["gt_recall"] == precision
    assert metrics["region_precision_before_clip"] == pytest.approx(
        metrics["region_precision"] / 2, abs=1e-4)
    assert metrics["gt_boxes"] == boxes
    sweep = pd.read_csv(tmp_path / "plots" / "threshold_sweep.csv")
    at = sweep.set_index("clip_threshold")
    assert at.loc[0.1, "regions_kept"] == 2 * boxes
    assert at.loc[0.5, "region_precision"] == metrics["region_precision"]
