"""The resumable map: ranks' shards merge under any process count, stale and torn shards
are redone, execution knobs never invalidate finished work, and one fingerprint rule."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from stage_runs import damage_a_page

from src import provenance
from src.data.shard_map import (
    by_shard,
    digest,
    fingerprint,
    map_image_shards,
    map_shards,
    remove_stale_shards,
    shard_batches,
)
from src.data.skips import Skip, SkipCounter
from src.data.tables import read_metadata, read_table

EMPTY = pd.DataFrame({"item": pd.Series([], dtype="int64"), "value": pd.Series([], dtype="int64")})
ITEMS = [(i, digest(f"{i}.jpg")) for i in (5, 1, 8, 3, 10, 7, 2)]  # any id order is kept


@dataclass
class FakeState:
    """The part of accelerate's state the map uses: one rank of `num_processes`."""

    process_index: int = 0
    num_processes: int = 1

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    def wait_for_everyone(self) -> None:
        pass


class Work:
    """Value 10 x id; ids divisible by 5 are skipped for good (path_escape), ids in
    `missing` for now. Records which ids it computed."""

    def __init__(self, missing: frozenset[int] = frozenset()) -> None:
        self.missing = missing
        self.computed: list[int] = []

    def __call__(self, shards: list[list[int]]):
        for shard in shards:
            ids = [ITEMS[position][0] for position in shard]
            self.computed += ids
            kept = [i for i in ids if i % 5 and i not in self.missing]
            skips = [Skip(i, "path_escape") for i in ids if not i % 5]
            skips += [Skip(i, "missing") for i in ids if i in self.missing]
            yield shard, pd.DataFrame({"item": kept, "value": [10 * i for i in kept]}), \
                SkipCounter.of(skips)


def _map(tmp_path: Path, work: Work, *, run: str = "r", shard_size: int = 2,
         state: FakeState | None = None, items: list = ITEMS):
    return map_shards(items, work, shards_dir=tmp_path / "shards", run=run,
                      shard_size=shard_size, state=state or FakeState(), key_column="item",
                      empty=EMPTY)


def test_one_process_maps_every_item_in_item_order(tmp_path: Path) -> None:
    work = Work()
    frame, skips = _map(tmp_path, work)
    assert sorted(work.computed) == sorted(i for i, _ in ITEMS)
    assert frame["item"].tolist() == [1, 8, 3, 7, 2]
    assert frame["value"].tolist() == [10, 80, 30, 70, 20]
    assert skips.as_dict() == {"path_escape": [5, 10]}
    assert len(list((tmp_path / "shards").glob("shard-*.parquet"))) == 4


def test_a_rank_shards_merge_under_another_process_count(tmp_path: Path) -> None:
    # Rank 1 of 2 finishes its shards (2nd and 4th of 4), then the run dies; one process
    # resumes and computes only the rest.
    first = Work()
    assert _map(tmp_path, first, state=FakeState(1, 2)) is None
    assert first.computed == [8, 3, 2]
    resumed = Work()
    frame, skips = _map(tmp_path, resumed)
    assert sorted(resumed.computed) == [1, 5, 7, 10]
    fresh, fresh_skips = _map(tmp_path / "fresh", Work())
    pd.testing.assert_frame_equal(frame, fresh)
    assert skips.as_dict() == fresh_skips.as_dict()


def test_execution_knobs_reuse_and_other_runs_or_inputs_redo(tmp_path: Path) -> None:
    _map(tmp_path, Work(), shard_size=3)
    again = Work()
    _map(tmp_path, again, shard_size=1)  # another shard size: nothing is redone
    assert again.computed == []
    changed = [*ITEMS[:-1], (2, digest("other/2.jpg"))]  # item 2's input changed
    redo = Work()
    _map(tmp_path, redo, items=changed)
    assert redo.computed == [2]
    other_run = Work()
    _map(tmp_path, other_run, run="r2")
    assert sorted(other_run.computed) == sorted(i for i, _ in ITEMS)
    # Clean-up keeps only the current run's shards: r wrote 3 + 1, r2 wrote 4.
    assert remove_stale_shards(tmp_path / "shards", "r2") == 4
    assert len(list((tmp_path / "shards").glob("shard-*.parquet"))) == 4


class FakeTokenizer:
    """What `processor_digest` reads of a bare tokenizer."""

    def __init__(self, vocab: dict[str, int]) -> None:
        self.vocab = vocab
        self.special_tokens_map = {"eos_token": "</s>"}

    def get_vocab(self) -> dict[str, int]:
        return self.vocab


def test_an_image_steps_run_is_its_code_params_model_processor_and_image_folder(
        tmp_path: Path) -> None:
    """Each of them redoes every image and leaves only its own run's shards; rows are keyed
    by image id."""
    def run(**changes: object) -> list[int]:
        work = Work()

        def image_rows(shards: list[list[int]]):
            for shard, frame, skips in work(shards):
                yield shard, frame.rename(columns={"item": "image_id"}), skips

        settings = {"code": "src.augment.detect", "params": {"floor_score": 0.1},
                    "model": "m", "processor": FakeTokenizer({"a": 0}),
                    "image_dir": Path("coco/train2017"), **changes}
        frame, _ = map_image_shards(ITEMS, image_rows, **settings, shards_dir=tmp_path,
                                    shard_size=2, state=FakeState(),
                                    empty=EMPTY.rename(columns={"item": "image_id"}))
        assert frame["image_id"].tolist() == [1, 8, 3, 7, 2]
        assert len(list(tmp_path.glob("shard-*.parquet"))) == 4  # this run's only
        return sorted(work.computed)

    every = sorted(i for i, _ in ITEMS)
    assert run() == every and run() == []
    for change in ({"code": "src.augment.clip_score"}, {"params": {"floor_score": 0.2}},
                   {"model": "m2"}, {"processor": FakeTokenizer({"b": 0})},
                   {"image_dir": Path("other/train2017")}):
        assert run(**change) == every, change
        assert run() == every  # that run removed this one's shards


def test_a_torn_shard_file_is_redone(tmp_path: Path) -> None:
    _map(tmp_path, Work())
    torn = sorted((tmp_path / "shards").glob("shard-*.parquet"))[0]
    torn.write_bytes(torn.read_bytes()[:40])  # e.g. a copy cut short
    redo = Work()
    frame, _ = _map(tmp_path, redo)
    assert 0 < len(redo.computed) <= 2
    assert frame["item"].tolist() == [1, 8, 3, 7, 2]


def test_items_skipped_for_a_reason_that_can_change_are_tried_again(tmp_path: Path) -> None:
    frame, skips = _map(tmp_path, Work(missing=frozenset({3, 7})))
    assert frame["item"].tolist() == [1, 8, 2]
    assert skips.as_dict() == {"missing": [3, 7], "path_escape": [5, 10]}
    restored = Work(missing=frozenset({7}))  # 3 is back, 7 is still missing
    frame, skips = _map(tmp_path, restored)
    assert restored.computed == [3, 7]  # not 5 and 10: a path escape cannot change
    assert frame["value"].tolist() == [10, 80, 30, 20]
    assert skips.as_dict() == {"missing": [7], "path_escape": [5, 10]}
    everything = Work()
    frame, skips = _map(tmp_path, everything)
    assert everything.computed == [7]
    assert frame["value"].tolist() == [10, 80, 30, 70, 20]
    assert skips.as_dict() == {"path_escape": [5, 10]}


def test_a_shard_with_a_damaged_page_is_named_removed_and_redone(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _map(tmp_path, Work())
    damaged = next(path for path in sorted((tmp_path / "shards").glob("shard-*.parquet"))
                   if 8 in read_table(path)[0]["item"].tolist())  # the shard of items 8 and 3
    damage_a_page(damaged, "value")
    assert read_metadata(damaged)["manifest"]["items"][0][0] == 8  # the footer reads
    redo = Work()
    with caplog.at_level(logging.WARNING, logger="src.data.shard_map"):
        frame, _ = _map(tmp_path, redo)
    assert redo.computed == [8, 3]
    assert frame["value"].tolist() == [10, 80, 30, 70, 20]
    assert f"removing damaged shard {damaged}" in caplog.text


def test_batches_never_cross_shards_and_regroup_by_shard() -> None:
    plan = shard_batches([[0, 1, 2], [3, 4]], lambda s: [s[i:i + 2] for i in range(0, len(s), 2)])
    assert plan == [(0, [0, 1]), (0, [2]), (1, [3, 4])]
    assert list(by_shard(plan, ["a", "b", "c"])) == [(0, ["a", "b"]), (1, ["c"])]


def test_fingerprint_changes_with_what_changes_outputs_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A project whose step imports `lib` inside a function; `other` is not imported.
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "step.py").write_text("def run():\n    from pkg import lib\n")
    (package / "lib.py").write_text("SCALE = 1\n")
    (package / "other.py").write_text("SCALE = 1\n")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)

    def run(**changes: object) -> str:
        return fingerprint(**{"code": "pkg.step", "params": {"a": 1, "b": [2]}, "model": "m",
                              "inputs": "x", **changes})

    base = run()
    assert base == run(params={"b": [2], "a": 1})
    assert base != run(params={"a": 2, "b": [2]})
    assert base != run(model="m2")
    assert base != run(inputs="y")
    (package / "other.py").write_text("SCALE = 2\n")
    assert run() == base  # not the step's code
    (package / "lib.py").write_text("SCALE = 2\n")
    edited = run()
    assert edited != base  # imported, if only inside a function
    version = provenance.metadata.version
    monkeypatch.setattr(provenance.metadata, "version",
                        lambda name: "0.0.1" if name == "tokenizers" else version(name))
    assert run() != edited  # another tokenizers release
