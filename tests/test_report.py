"""The demo's closing table is read from `dvc exp show --json` output."""

from __future__ import annotations

from stages.report import experiments, metrics_of, render


def _rev(name: str, timestamp: str, cider: float) -> dict:
    metrics = {"metrics/metrics.json": {"data": {"cider": cider, "bleu4": 0.25}},
               "metrics/baseline.json": {"data": {"cider": 0.01, "bleu4": 0.0}},
               "metrics/train.json": {"data": {"loss": 1.5, "steps": 300}},
               "metrics/augment.json": {"error": {"type": "FileNotFoundError"}}}
    return {"rev": "abc1234def", "name": name, "data": {"timestamp": timestamp, "metrics": metrics}}


SHOW = [{"rev": "workspace", "data": {"metrics": {}}, "experiments": None},
        {"rev": "main", "data": {"metrics": {}},
         "experiments": [{"revs": [_rev("demo-old", "2026-11-26T10:00:00", 1.0)]},
                         {"revs": [_rev("demo-new", "2026-11-26T11:00:00", 2.5)]}]}]


def test_newest_experiment_first() -> None:
    assert [rev["name"] for rev in experiments(SHOW)] == ["demo-new", "demo-old"]


def test_table_puts_base_next_to_fine_tuned() -> None:
    table = render("demo-new", metrics_of(experiments(SHOW)[0]))
    assert "| cider | 0.0100 | 2.5000 |" in table
    assert "| bleu4 | 0 | 0.2500 |" not in table and "| bleu4 | 0.0000 | 0.2500 |" in table
    assert "training: loss 1.5000, steps 300" in table
    assert "augmentation" not in table


def test_unavailable_clipscore_shows_a_dash() -> None:
    """metrics.json holds `clipscore: null` when CLIP could not be loaded."""
    metrics = {"metrics/metrics.json": {"cider": 2.5, "clipscore": None,
                                        "clipscore_unavailable": "could not load 'x'"},
               "metrics/baseline.json": {"cider": 0.01, "clipscore": 0.5}}
    assert "| clipscore | 0.5000 | – |" in render("demo", metrics)
