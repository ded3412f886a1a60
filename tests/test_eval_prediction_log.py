"""The resumable prediction logs: ranks merge, stale logs are ignored, a torn line is redone."""

from __future__ import annotations

import json
from pathlib import Path

from src.eval.prediction_log import (
    Prediction,
    PredictionLog,
    fingerprint,
    log_paths,
    remove_logs,
    run_key,
)


def test_ranks_merge_and_survive_a_new_process_count(tmp_path: Path) -> None:
    prefix = tmp_path / ".preds.partial"
    for rank, predictions in enumerate([[Prediction(1, caption="a"), Prediction(3, skip="missing")],
                                        [Prediction(2, caption="")]]):
        with PredictionLog(prefix, key="k", rank=rank).appending() as append:
            append(predictions)
    # A single-process resume reads both ranks' logs.
    assert PredictionLog(prefix, key="k").load() == {
        1: Prediction(1, caption="a"),
        2: Prediction(2, caption=""),
        3: Prediction(3, skip="missing"),
    }
    with PredictionLog(prefix, key="k", rank=0).appending() as append:
        append([Prediction(4, caption="b")])
    assert sorted(PredictionLog(prefix, key="k").load()) == [1, 2, 3, 4]
    remove_logs(prefix)
    assert log_paths(prefix) == []


def test_a_log_of_other_settings_is_ignored_then_replaced(tmp_path: Path) -> None:
    prefix = tmp_path / "p"
    with PredictionLog(prefix, key="old").appending() as append:
        append([Prediction(1, caption="stale")])
    fresh = PredictionLog(prefix, key="new")
    assert fresh.load() == {}
    with fresh.appending() as append:
        append([Prediction(2, caption="fresh")])
    assert fresh.load() == {2: Prediction(2, caption="fresh")}
    assert PredictionLog(prefix, key="old").load() == {}


def test_a_line_torn_by_a_kill_is_dropped_and_cut_off(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "p", key="k")
    with log.appending() as append:
        append([Prediction(1, caption="one")])
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"image_id": 2, "capt')  # killed mid-write
    assert log.load() == {1: Prediction(1, caption="one")}
    with log.appending() as append:
        append([Prediction(2, caption="two")])
    lines = log.path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"key": "k"}, {"image_id": 1, "caption": "one"}, {"image_id": 2, "caption": "two"}]


def test_run_key_and_fingerprint_change_with_what_changes_captions(tmp_path: Path) -> None:
    assert run_key({"a": 1, "b": [2]}) == run_key({"b": [2], "a": 1})
    assert run_key({"a": 1}) != run_key({"a": 2})
    assert fingerprint("llava-hf/llava-1.5-7b-hf") == "llava-hf/llava-1.5-7b-hf"
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "w.bin").write_bytes(b"1234")
    before = fingerprint(tmp_path / "adapter")
    assert fingerprint(tmp_path / "adapter") == before
    (tmp_path / "adapter" / "w.bin").write_bytes(b"12345")
    assert fingerprint(tmp_path / "adapter") != before
