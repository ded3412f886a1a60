"""The compact table and the sweep plot are read from `dvc exp show --json` output."""

from __future__ import annotations

import pytest

from tools.report import experiments, plot_csv, render, select


def _rev(name: str, timestamp: str, threshold: float, cider: float, kept: int,
         lr: float = 1e-3) -> dict:
    metrics = {"metrics/metrics.json": {"data": {"cider": cider, "bleu4": 0.25,
                                                 "cider_wrong_images": 0.75, "clipscore": 0.5}},
               "metrics/baseline.json": {"data": {"cider": 0.01, "bleu4": 0.0,
                                                  "cider_wrong_images": 0.02, "clipscore": 0.4}},
               "metrics/train.json": {"data": {"loss": 1.5, "steps": 300}},
               "metrics/augment.json": {"data": {"regions_kept": kept, "keep_rate": 0.25,
                                                 "region_examples": kept // 2}}}
    params = {"params.yaml": {"data": {"clip_threshold": threshold, "seed": 0,
                                       "train": {"lr": lr, "epochs": 1}}}}
    return {"rev": f"{name}0000000", "name": name,
            "data": {"timestamp": timestamp, "metrics": metrics, "params": params}}


QUEUED = {"rev": "q", "name": "queued", "data": {"timestamp": "2026-11-26T13:00:00",
                                                 "metrics": {}, "params": {}}}
SHOW = [{"rev": "workspace", "data": {"metrics": {}}, "experiments": None},
        {"rev": "main", "data": {"metrics": {}},
         "experiments": [{"revs": [_rev("sweep-1", "2026-11-26T10:00:00", 0.3, 1.0, 40)]},
                         {"revs": [_rev("sweep-2", "2026-11-26T11:00:00", 0.2, 2.5, 90)]},
                         {"revs": [_rev("demo", "2026-11-26T12:00:00", 0.2, 2.0, 90, 2e-3)]},
                         {"revs": [QUEUED]}]}]


def test_newest_experiment_with_results_first() -> None:
    assert [rev["name"] for rev in experiments(SHOW)] == ["demo", "sweep-2", "sweep-1"]


def test_sweep_table_shows_the_threshold_headline_metrics_and_one_base_row() -> None:
    table = render(select(experiments(SHOW), [], "sweep-"))
    assert table.splitlines() == [
        "| experiment | clip_threshold | regions kept | region examples | keep rate | train loss "
        "| BLEU-4 | CIDEr | CIDEr, wrong images | CLIPScore |",
        "|---|---|---|---|---|---|---|---|---|---|",
        "| sweep-1 | 0.3 | 40 | 20 | 0.2500 | 1.5000 | 0.2500 | 1.0000 | 0.7500 | 0.5000 |",
        "| sweep-2 | 0.2 | 90 | 45 | 0.2500 | 1.5000 | 0.2500 | 2.5000 | 0.7500 | 0.5000 |",
        "| zero-shot base |  |  |  |  |  | 0.0000 | 0.0100 | 0.0200 | 0.4000 |"]


def test_params_that_differ_get_a_column() -> None:
    table = render(select(experiments(SHOW), ["demo", "sweep-2"], None))
    assert table.splitlines()[0].startswith("| experiment | clip_threshold | train.lr | regions")
    assert table.splitlines()[2].startswith("| demo | 0.2 | 0.002 | 90 |")


def test_plot_points_are_sorted_by_threshold() -> None:
    assert plot_csv(select(experiments(SHOW), [], "sweep-")) == \
        "clip_threshold,regions_kept,cider\n0.2,90,2.5\n0.3,40,1.0\n"


def test_unknown_names_fail_clearly() -> None:
    with pytest.raises(SystemExit, match="no experiment nope"):
        select(experiments(SHOW), ["nope"], None)


def test_unavailable_clipscore_shows_a_dash() -> None:
    """metrics.json holds `clipscore: null` when CLIP could not be loaded."""
    offline = _rev("offline", "2026-11-26T14:00:00", 0.2, 2.5, 90)
    offline["data"]["metrics"]["metrics/metrics.json"]["data"].update(
        clipscore=None, clipscore_unavailable="could not load 'x'")
    row = render([offline]).splitlines()[2]
    assert row == "| offline | 0.2 | 90 | 45 | 0.2500 | 1.5000 | 0.2500 | 2.5000 | 0.7500 | – |"
