"""The compact table and the sweep plot are read from `dvc exp show --json` output."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tools.report import experiments, plot_csv, render, render_comparisons, select


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


def _table(cider: list[float], hallucinated: list[int] | None = None,
           mentions: list[int] | None = None) -> pd.DataFrame:
    table = pd.DataFrame({"image_id": range(1, len(cider) + 1), "cider": cider})
    if hallucinated is not None:
        table["chair_hallucinated"], table["chair_mentions"] = hallucinated, mentions
    return table


def test_plot_points_are_sorted_by_threshold_with_an_interval_over_images() -> None:
    """One point per threshold; the interval is the bootstrap of the per-image CIDEr."""
    tables = {"sweep-1": {"finetuned": _table([1.0] * 4)},
              "sweep-2": {"finetuned": _table([2.0, 3.0, 2.0, 3.0])}}
    lines = plot_csv(select(experiments(SHOW), [], "sweep-"), tables).splitlines()
    assert lines[0] == "clip_threshold,regions_kept,cider,cider_low,cider_high,cider_sd,seeds"
    assert lines[2] == "0.3,40,1.0,1.0,1.0,,1"
    threshold, kept, cider, low, high, sd, seeds = lines[1].split(",")
    assert (threshold, kept, cider, sd, seeds) == ("0.2", "90", "2.5", "", "1")
    assert 2.0 <= float(low) < 2.5 < float(high) <= 3.0


def _ablation_rev(name: str, ratio: float, seed: int) -> dict:
    rev = _rev(name, f"2026-12-06T10:0{seed}:{ratio * 10:02.0f}", 0.6, 1.0, 40)
    rev["data"]["params"]["params.yaml"]["data"].update(
        assemble={"max_region_ratio": ratio}, train={"lr": 1e-3, "seed": seed})
    return rev


NUM_IMAGES = 200
RNG = np.random.default_rng(7)
REFERENCE = [RNG.uniform(0.2, 1.0, NUM_IMAGES) for _ in range(2)]  # one run per training seed
MENTIONS = [2] * NUM_IMAGES
# Reference: half the captions name one wrong object (CHAIR_i 0.25, CHAIR_s 0.5).
HALLUCINATED = [1, 0] * (NUM_IMAGES // 2)


def _ablation() -> tuple[list[dict], dict]:
    """Three arms x training seeds 0, 1: the reference (ratio 0); ratio 1.0, planted +0.3
    CIDEr (plus per-image noise) and no hallucination; ratio 0.5, the reference's scores
    over the images in another order (an equal mean)."""
    base = _table(list(RNG.uniform(0.0, 0.1, NUM_IMAGES)), [2] * NUM_IMAGES, MENTIONS)
    selected, tables = [], {}
    for seed in (0, 1):
        arms = {0.0: _table(list(REFERENCE[seed]), HALLUCINATED, MENTIONS),
                1.0: _table(list(REFERENCE[seed] + 0.3 + RNG.normal(0, 0.05, NUM_IMAGES)),
                            [0] * NUM_IMAGES, MENTIONS),
                0.5: _table(list(np.roll(REFERENCE[seed], 1)), HALLUCINATED, MENTIONS)}
        for ratio, table in arms.items():
            name = f"ablation-r{ratio}-s{seed}"
            selected.append(_ablation_rev(name, ratio, seed))
            tables[name] = {"finetuned": table, "base": base}
    return selected, tables


def _row(text: str, first: str) -> list[str]:
    """The cells of the last row starting with `first` (per-experiment rows come last)."""
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first} ")][-1]


def _verdict(cell: str) -> str:
    return cell.split("] ", 1)[1]


def test_a_planted_difference_is_detected_and_an_equal_pair_is_not() -> None:
    selected, tables = _ablation()
    text = render_comparisons(selected, tables, "assemble.max_region_ratio=0",
                              num_resamples=1000)
    header = _row(text, "configuration")
    regions = dict(zip(header, _row(text, "ablation-r1.0-s0, ablation-r1.0-s1"), strict=True))
    assert regions["seeds"] == "2"
    assert float(regions["ΔCIDEr"].split()[0]) == pytest.approx(0.3, abs=0.01)
    assert _verdict(regions["ΔCIDEr"]) == "higher"
    # CHAIR_i 0 - 0.25 and CHAIR_s 0 - 0.5, exactly: no hallucinated object anywhere.
    assert regions["ΔCHAIR_i"].startswith("-0.250 ") and _verdict(regions["ΔCHAIR_i"]) == "lower"
    assert regions["ΔCHAIR_s"].startswith("-0.500 ") and _verdict(regions["ΔCHAIR_s"]) == "lower"
    equal = dict(zip(header, _row(text, "ablation-r0.5-s0, ablation-r0.5-s1"), strict=True))
    assert equal["ΔCIDEr"].startswith("+0.000 [-")
    assert _verdict(equal["ΔCIDEr"]) == "not distinguishable"
    assert equal["ΔCHAIR_i"] == "+0.000 [+0.000, +0.000] not distinguishable"
    assert _row(text, "reference: ablation-r0.0-s0, ablation-r0.0-s1")[-3:] == ["–", "–", "–"]
    # Per experiment, each seed against the reference run of the same seed.
    for seed in (0, 1):
        assert _verdict(_row(text, f"ablation-r1.0-s{seed}")[2]) == "higher"
        assert _verdict(_row(text, f"ablation-r0.5-s{seed}")[2]) == "not distinguishable"
    assert not any(line.startswith("| ablation-r0.0-s") for line in text.splitlines())


def test_mean_and_sd_over_training_seeds() -> None:
    """Two seeds with mean CIDEr 1.0 and 1.2: 1.100 ± 0.141 (sample sd, sqrt(0.02))."""
    selected, tables = _ablation()
    for seed, cider in ((0, 1.0), (1, 1.2)):
        tables[f"ablation-r0.0-s{seed}"]["finetuned"]["cider"] = cider
    text = render_comparisons(selected, tables, "assemble.max_region_ratio=0", num_resamples=200)
    header = _row(text, "configuration")
    reference = dict(zip(header, _row(text, "reference: ablation-r0.0-s0, ablation-r0.0-s1"),
                         strict=True))
    assert reference["CIDEr (mean ± sd)"] == "1.100 ± 0.141"
    assert reference["CIDEr 95 % CI"] == "[1.100, 1.100]"  # pooled per image: 1.1 everywhere
    assert reference["CHAIR_i"] == "0.250 ± 0.000" and reference["CHAIR_s"] == "0.500 ± 0.000"


def test_against_the_base_by_default_and_the_same_images_required() -> None:
    selected, tables = _ablation()
    text = render_comparisons(selected[:1], tables, num_resamples=200)
    assert text.startswith("Against zero-shot base: paired differences over the same 200 val")
    row = _row(text, "ablation-r0.0-s0")
    assert _verdict(row[2]) == "higher"  # the reference arm against the base
    assert _row(text, "zero-shot base")[1] == ""
    tables["ablation-r0.0-s0"]["base"] = tables["ablation-r0.0-s0"]["base"].iloc[1:]
    with pytest.raises(ValueError, match="score different images"):
        render_comparisons(selected[:1], tables, num_resamples=200)


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
