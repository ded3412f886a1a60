"""The detect stage's resume scratch never outlives what made it: a code change redoes the
finished shards, a restored image is detected, a damaged shard is redone, and the temp
files of a killed write are removed."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
from stage_runs import (
    damage_a_page,
    edit,
    phrase_subset,
    project_copy,
    run_detect,
    run_phrases,
    write_params,
)

from src.data import shard_map
from src.data.tables import read_metadata, read_table

WRITE_SHARD = shard_map.write_shard
IMAGES = list(range(1, 9))  # 8 demo images, in 2 shards of 4


@pytest.fixture(scope="module")
def work(demo_coco: Path, tiny_models: dict[str, Path],
         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's phrases, their subset of IMAGES, and params with shards of 4."""
    work = tmp_path_factory.mktemp("detect_resume")
    write_params(work / "params.yaml", tiny_models, **{"detect.shard_size": 4})
    run_phrases(demo_coco, work, work / "params.yaml")
    phrase_subset(work, IMAGES, "subset")
    return work


def _detect(coco: Path, work: Path, name: str) -> Path:
    return run_detect(coco, work, work / "params.yaml", name, "subset.parquet")


def _record_redone(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The image ids of every shard written from now on: the items a run computed."""
    redone: list[int] = []

    def recording(shards_dir: Path, run: str, items, *args, **kwargs) -> Path:
        redone.extend(item for item, _ in items)
        return WRITE_SHARD(shards_dir, run, items, *args, **kwargs)

    monkeypatch.setattr(shard_map, "write_shard", recording)
    return redone


def test_a_code_change_in_the_detect_step_redoes_finished_shards(
        work: Path, demo_coco: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _detect(demo_coco, work, "code")
    expected = read_table(first)
    project = project_copy(tmp_path / "project", monkeypatch)
    redone = _record_redone(monkeypatch)
    _detect(demo_coco, work, "code")
    assert redone == []  # the copy is the same code: everything is reused
    edit(project / "src" / "eval" / "metrics.py")  # not code that detect runs
    _detect(demo_coco, work, "code")
    assert redone == []
    edit(project / "src" / "augment" / "grounding.py")  # the boxes' code
    _detect(demo_coco, work, "code")
    assert sorted(redone) == IMAGES
    assert len(list((work / "code_shards").glob("shard-*.parquet"))) == 2  # old ones removed
    frame, metadata = read_table(first)
    pd.testing.assert_frame_equal(frame, expected[0])
    assert metadata == expected[1]


def test_a_restored_image_is_detected_on_rerun(work: Path, demo_coco: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(demo_coco, coco)
    image = coco / "train2017" / "000000000003.jpg"
    image.rename(tmp_path / "away.jpg")
    frame, metadata = read_table(_detect(coco, work, "restored"))
    assert metadata["detect"]["skipped"] == {"missing": [3]}
    assert 3 not in set(frame["image_id"])

    (tmp_path / "away.jpg").rename(image)
    redone = _record_redone(monkeypatch)
    frame, metadata = read_table(_detect(coco, work, "restored"))
    assert redone == [3]  # only the skipped image is tried again
    assert metadata["detect"]["skipped"] == {}
    assert 3 in set(frame["image_id"])
    whole, whole_metadata = read_table(_detect(coco, work, "restored_fresh"))
    pd.testing.assert_frame_equal(frame, whole)
    assert metadata == whole_metadata


def test_a_damaged_shard_is_named_removed_and_redone(work: Path, demo_coco: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    out = _detect(demo_coco, work, "damaged")
    expected = read_table(out)
    shard = sorted((work / "damaged_shards").glob("shard-*.parquet"))[0]
    items = sorted(item for item, _ in read_metadata(shard)["manifest"]["items"])
    damage_a_page(shard, "box_score")
    redone = _record_redone(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="src.data.shard_map"):
        frame, metadata = read_table(_detect(demo_coco, work, "damaged"))
    assert f"removing damaged shard {shard}" in caplog.text
    assert sorted(redone) == items and len(items) == 4  # that shard's images, no other
    pd.testing.assert_frame_equal(frame, expected[0])
    assert metadata == expected[1]


def test_temp_files_of_a_killed_write_are_removed(work: Path, demo_coco: Path) -> None:
    out = _detect(demo_coco, work, "temps")
    hex32 = "0123456789abcdef" * 2
    stale = [work / "temps_shards" / f".shard-0123.parquet.{hex32}.tmp",
             work / f".temps.parquet.{hex32}.tmp"]
    kept = [work / f".regions.parquet.{hex32}.tmp",  # another step's output in that folder
            work / "temps_shards" / "notes.tmp"]  # not a temp file of ours
    for path in stale + kept:
        path.write_bytes(b"half written")
    assert read_table(_detect(demo_coco, work, "temps"))[0].equals(read_table(out)[0])
    assert [path.exists() for path in stale + kept] == [False, False, True, True]
