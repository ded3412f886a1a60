"""Thresholds, cross-phrase NMS, the cap and the example mix, on hand-made rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from src.augment import training_examples
from src.augment.box_gallery import (
    CELL,
    KEPT,
    LEGEND_HEIGHT,
    TRUTH,
    choose_gallery,
    draw_boxes,
    grid,
)
from src.augment.training_examples import (
    AssembleConfig,
    assemble,
    box_text,
    cap_regions,
    cross_phrase_nms,
    passes_box_text,
    threshold_sweep,
)
from src.data.boxes import box_iou
from src.data.jsonl import write_examples

COLUMNS = ["name", "image_id", "phrase_index", "query_index", "box_x0", "box_y0", "box_x1",
           "box_y1", "box_score", "phrase_score", "clip_score"]
ROWS = [  # name, image, phrase, query, box xyxy, box_score, phrase_score, clip_score
    ("A", 1, 0, 0, 0, 0, 10, 10, 0.9, 0.8, 0.30),
    ("B", 1, 1, 0, 0, 0, 10, 10, 0.9, 0.5, 0.35),  # A's box, weaker phrase: IoU 1
    ("C", 1, 0, 1, 1, 0, 11, 10, 0.8, 0.8, 0.40),  # IoU with A 90/110 = 0.82
    ("D", 1, 2, 2, 20, 20, 30, 30, 0.3, 0.25, 0.20),  # exactly at both thresholds
    ("E", 1, 1, 3, 2, 0, 12, 10, 0.7, 0.3, 0.27),  # IoU with A 80/120 = 0.67
    ("F", 1, 0, 4, 40, 40, 50, 50, 0.29, 0.9, 0.90),  # box score too low
    ("G", 1, 1, 5, 40, 0, 50, 10, 0.9, 0.24, 0.90),  # phrase score too low
    ("H", 2, 0, 0, 0, 0, 5, 5, 0.6, 0.6, 0.50),  # A's place, another image
]


@pytest.fixture
def regions() -> pd.DataFrame:
    frame = pd.DataFrame(ROWS, columns=COLUMNS)
    frame["phrase"] = frame["name"].str.lower() + " thing"
    frame["caption"] = "a " + frame["phrase"]
    frame["file_name"] = frame["image_id"].map(lambda i: f"{i:012d}.jpg")
    frame["width"], frame["height"] = 20, 40
    return frame


@pytest.fixture
def config() -> AssembleConfig:
    return AssembleConfig(box_threshold=0.3, text_threshold=0.25, clip_threshold=0.26,
                          nms_iou=0.7, full_prompt="Caption it.", region_prompt="Name it.",
                          region_format="crop", max_region_ratio=1.0, seed=0)


def _names(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["name"])


def test_box_and_text_thresholds_are_inclusive(regions: pd.DataFrame) -> None:
    assert _names(passes_box_text(regions, 0.3, 0.25)) == ["A", "B", "C", "D", "E", "H"]


def test_iou() -> None:
    others = pd.DataFrame([[1, 0, 11, 10], [2, 0, 12, 10], [20, 20, 30, 30]]).to_numpy(float)
    boxes = pd.DataFrame([[0, 0, 10, 10], [20, 20, 30, 30]]).to_numpy(float)
    assert box_iou(boxes, others).tolist() == [pytest.approx([90 / 110, 80 / 120, 0.0]),
                                               pytest.approx([0.0, 0.0, 1.0])]


def test_nms_keeps_one_phrase_per_box_and_suppresses_overlaps(regions: pd.DataFrame) -> None:
    candidates = passes_box_text(regions, 0.3, 0.25)
    assert _names(cross_phrase_nms(candidates, 0.7)) == ["A", "D", "E", "H"]
    # E survives A at 0.7 but not at 0.6; an IoU of 1.0 is never *above* 1.0.
    assert _names(cross_phrase_nms(candidates, 0.6)) == ["A", "D", "H"]
    assert _names(cross_phrase_nms(candidates, 1.0)) == ["A", "B", "C", "D", "E", "H"]


def test_nms_is_the_same_one_image_at_a_time(regions: pd.DataFrame,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Images are suppressed together in padded chunks; a chunk of one image (a budget of
    one cell) gives the same survivors, and image 2 never suppresses image 1's box A."""
    candidates = passes_box_text(regions, 0.3, 0.25)
    together = cross_phrase_nms(candidates, 0.6)
    monkeypatch.setattr(training_examples, "NMS_CELLS", 1)
    assert _names(cross_phrase_nms(candidates, 0.6)) == _names(together) == ["A", "D", "H"]
    assert cross_phrase_nms(candidates.head(0), 0.6).empty


def test_nms_order_does_not_depend_on_input_order(regions: pd.DataFrame) -> None:
    shuffled = regions.sample(frac=1.0, random_state=3).reset_index(drop=True)
    assert cross_phrase_nms(shuffled, 0.7)["name"].tolist() == \
        cross_phrase_nms(regions, 0.7)["name"].tolist()


def test_cap_prefers_clip_score_and_breaks_ties_by_seed(regions: pd.DataFrame) -> None:
    assert _names(cap_regions(regions, 3, seed=0)) == ["F", "G", "H"]  # 0.9, 0.9, 0.5
    assert len(cap_regions(regions, 0, seed=0)) == 0
    tied = regions.assign(clip_score=0.5)
    picks = {tuple(_names(cap_regions(tied, 2, seed=s))) for s in range(10)}
    assert len(picks) > 1  # the seed decides among equals, the same way every time
    assert _names(cap_regions(tied, 2, seed=4)) == _names(cap_regions(tied, 2, seed=4))


def test_box_text_is_llava_notation() -> None:
    assert box_text((2.0, 12.0, 11.0, 36.4), 20, 40) == "[0.10, 0.30, 0.55, 0.91]"


def _captions() -> pd.DataFrame:
    return pd.DataFrame({"image_id": [1, 1, 2, 3], "file_name": [f"{i:012d}.jpg" for i in
                                                                  (1, 1, 2, 3)],
                         "width": 20, "height": 40, "caption_id": [11, 10, 20, 30],
                         "caption": ["One  dog. ", "A cat.", "Two.", "   "]})


def _counts(skipped: dict[str, list[int]] | None = None) -> dict:
    detect = {"images": 2, "images_no_detections": 0, "phrases": 6, "phrases_too_long": 1,
              "candidates": 16, "queries": 2, "skipped": skipped or {}}
    return {"detect": detect, "clip_score": {"small_boxes": 8, "skipped": {}}}


def test_assemble_examples_metrics_and_order(regions: pd.DataFrame,
                                             config: AssembleConfig) -> None:
    result = assemble(_captions(), regions, _counts(), config, "train2017")
    examples = list(result.examples())
    ids = [e.id for e in examples]
    assert ids == ["1-full-10", "1-full-11", "1-region-0-0", "1-region-1-3", "2-full-20",
                   "2-region-0-0"]
    full = examples[1]
    assert (full.image, full.kind, full.bbox, full.prompt, full.caption) == (
        "train2017/000000000001.jpg", "full", None, "Caption it.", "One dog.")
    region = examples[3]  # E
    assert (region.bbox, region.prompt, region.caption, region.meta["clip_score"]) == (
        (2.0, 0.0, 12.0, 10.0), "Name it.", "a e thing", 0.27)
    assert result.metrics == {
        "images": 3, "images_skipped": 0, "images_no_phrases": 1, "images_no_detections": 0,
        "phrases": 6, "phrases_too_long": 1, "candidates": 16, "candidates_small": 8,
        "after_box_text": 6, "after_nms": 4, "regions_kept": 3, "keep_rate": round(3 / 16, 4),
        "captions_empty": 1, "full_examples": 3, "region_examples": 3}


def test_examples_are_the_same_bytes_whatever_the_chunk(regions: pd.DataFrame,
                                                        config: AssembleConfig,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Examples are built EXAMPLE_CHUNK images at a time; chunks of one and of two images
    (captions out of image order, image 3 with a caption but no region) write the file
    that one chunk of all images writes."""
    captions = pd.concat([_captions(), _captions().head(1).assign(
        image_id=3, file_name="000000000003.jpg", caption_id=31)])
    result = assemble(captions.iloc[::-1], regions, _counts(), config, "train2017")
    one_chunk = tmp_path / "one.jsonl"
    assert write_examples(one_chunk, result.examples()) == 7  # 4 full + 3 regions (A, E, H)
    for images in (1, 2):
        monkeypatch.setattr(training_examples, "EXAMPLE_CHUNK", images)
        chunked = tmp_path / f"chunks-of-{images}.jsonl"
        write_examples(chunked, result.examples())
        assert chunked.read_bytes() == one_chunk.read_bytes()
    assert [e.id for e in result.examples()] == [
        "1-full-10", "1-full-11", "1-region-0-0", "1-region-1-3", "2-full-20", "2-region-0-0",
        "3-full-31"]


def test_region_cap_follows_the_ratio(regions: pd.DataFrame, config: AssembleConfig) -> None:
    result = assemble(_captions(), regions, _counts(),
                      dataclasses.replace(config, max_region_ratio=0.5), "train2017")
    assert result.metrics["full_examples"] == 3
    assert result.metrics["region_examples"] == 1  # int(0.5 * 3): H, the best CLIP score
    assert [e.id for e in result.examples() if e.kind == "region"] == ["2-region-0-0"]


def test_skipped_images_give_no_examples(regions: pd.DataFrame, config: AssembleConfig) -> None:
    result = assemble(_captions(), regions, _counts({"truncated": [1]}), config, "train2017")
    assert {e.id.split("-")[0] for e in result.examples() if e.kind == "full"} == {"2"}
    assert result.metrics["images_skipped"] == 1
    assert result.metrics["images_skipped_truncated"] == 1


def test_box_format_writes_the_box_into_the_prompt(regions: pd.DataFrame,
                                                   config: AssembleConfig) -> None:
    box_config = dataclasses.replace(config, region_format="box",
                                     region_prompt="Describe the region {box} in one short phrase.")
    result = assemble(_captions(), regions, _counts(), box_config, "train2017")
    region = next(e for e in result.examples() if e.id == "1-region-1-3")  # E: (2, 0, 12, 10)
    assert region.bbox is None
    assert region.image == "train2017/000000000001.jpg"
    assert region.prompt == "Describe the region [0.10, 0.00, 0.60, 0.25] in one short phrase."


def test_threshold_sweep_spans_the_scores(regions: pd.DataFrame) -> None:
    sweep = threshold_sweep(regions)  # clip scores 0.20 ... 0.90
    kept = dict(zip(sweep["clip_threshold"], sweep["regions_kept"], strict=True))
    assert len(sweep) == 71 and min(kept) == 0.2 and max(kept) == 0.9
    assert (kept[0.2], kept[0.27], kept[0.28], kept[0.3], kept[0.9]) == (8, 7, 6, 6, 2)
    assert sweep.to_csv(index=False).splitlines()[:2] == ["clip_threshold,regions_kept",
                                                          "0.2,8"]
    assert len(threshold_sweep(regions.head(0))) == 51


def test_gallery_marks_kept_boxes(regions: pd.DataFrame) -> None:
    candidates = passes_box_text(regions, 0.3, 0.25)
    chosen = candidates[candidates["name"].isin(["A", "H"])]
    gallery = choose_gallery(candidates, chosen, num_images=5, seed=0)
    assert sorted(gallery) == [1, 2]
    assert sorted((b.label, b.kept) for b in gallery[1]) == [
        ("a thing 0.30", True), ("b thing 0.35", False), ("c thing 0.40", False),
        ("d thing 0.20", False), ("e thing 0.27", False)]
    tile = draw_boxes(Image.new("RGB", (20, 40), (0, 0, 0)), gallery[1])
    assert max(tile.size) == CELL
    colors = {color for _, color in tile.getcolors(CELL * CELL)}
    assert KEPT in colors and TRUTH not in colors
    with_truth = draw_boxes(Image.new("RGB", (20, 40), (0, 0, 0)), [], [(5, 10, 15, 30)])
    truth_pixels = (pd.DataFrame(list(with_truth.getdata())) == TRUTH).all(axis=1)
    assert 0 < truth_pixels.sum() < 0.05 * CELL * CELL  # a thin outline, not a fill
    assert with_truth.getpixel((40, 160)) == TRUTH  # the left edge, scaled by CELL / 40 = 8
    assert with_truth.getpixel((80, 160)) == (0, 0, 0)  # inside stays as it was
    assert grid([tile] * 5).size == (4 * CELL, LEGEND_HEIGHT + 2 * CELL)
