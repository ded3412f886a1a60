"""Print experiments side by side: the params that differ and the headline metrics, with the
zero-shot base on the side; then each experiment's paired difference with a reference over the
same val images, with its 95 % bootstrap interval and a verdict, and each configuration's mean
± sd over training seeds; optionally write CIDEr and regions kept by threshold as a DVC plot.

    python -m tools.report                         # the newest experiment
    python -m tools.report --exp demo-20261126-120000
    python -m tools.report --prefix sweep-20261126-120000 --plot plots/sweep/thresholds.csv
    python -m tools.report --prefix ablation-20261126-120000 \\
        --reference assemble.max_region_ratio=0     # against the no-regions arm, not the base

The per-image scores of each experiment are read from the DVC cache at its commit
(`dvc.api.open`), so this runs offline. Experiments differing only in `train.seed` are one
configuration: their per-image scores are pooled before the paired bootstrap.

`dvc exp show --only-changed --keep ...` alone is not enough: its CSV/table names the
fine-tuned and the base metrics alike (both `cider`), and its JSON ignores those options.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from src.data.atomic import atomic_write_text
from src.eval.compare import Spread, Summary, difference, summarize
from src.eval.intervals import BOOTSTRAP_SEED, LEVEL, NUM_RESAMPLES, Difference

# (column, metrics file, key): the headline numbers, in the order a threshold sweep reads them.
# Regions kept are those the CLIP filter passes; region examples, those in the training set
# (none with assemble.max_region_ratio=0). CIDEr on wrong images is the image-blind control.
HEADLINE = (("regions kept", "metrics/augment.json", "regions_kept"),
            ("region examples", "metrics/augment.json", "region_examples"),
            ("keep rate", "metrics/augment.json", "keep_rate"),
            ("train loss", "metrics/train.json", "loss"),
            ("BLEU-4", "metrics/metrics.json", "bleu4"),
            ("CIDEr", "metrics/metrics.json", "cider"),
            ("CIDEr, wrong images", "metrics/metrics.json", "cider_wrong_images"),
            ("CLIPScore", "metrics/metrics.json", "clipscore"))
BASELINE = "metrics/baseline.json"
ALWAYS_SHOWN = ("clip_threshold",)
PLOT_COLUMNS = ("clip_threshold", "regions_kept", "cider", "cider_low", "cider_high", "cider_sd",
                "seeds")
PER_IMAGE = "data/processed/per_image_scores.csv"
PER_IMAGE_BASE = "data/processed/per_image_scores_base.csv"
TRAINING_SEED = "train.seed"
BASE = "zero-shot base"
# An experiment's per-image scores: the fine-tuned model's and the zero-shot base's.
Tables = dict[str, pd.DataFrame]


def experiments(show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every experiment with results in `dvc exp show --json` output, newest first."""
    found = []
    for baseline in show:
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs", []):
                if rev.get("data") and rev["data"].get("metrics"):
                    found.append(rev)
    return sorted(found, key=lambda rev: rev["data"].get("timestamp") or "", reverse=True)


def metrics_of(experiment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {path: entry.get("data") or {} for path, entry in
            experiment["data"].get("metrics", {}).items()}


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def params_of(experiment: dict[str, Any]) -> dict[str, Any]:
    return _flat(experiment["data"].get("params", {}).get("params.yaml", {}).get("data") or {})


def changed_params(selected: list[dict[str, Any]]) -> list[str]:
    """`clip_threshold`, then every param whose value differs between the experiments."""
    values = [params_of(experiment) for experiment in selected]
    keys = sorted({key for flat in values for key in flat})
    differ = [key for key in keys if len({json.dumps(flat.get(key)) for flat in values}) > 1]
    return [*ALWAYS_SHOWN, *(key for key in differ if key not in ALWAYS_SHOWN)]


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def _param(value: object) -> str:
    return "–" if value is None else str(value)


def _name(experiment: dict[str, Any]) -> str:
    return experiment.get("name") or experiment["rev"][:7]


def render(selected: list[dict[str, Any]]) -> str:
    """A Markdown table: one row per experiment, then one per distinct zero-shot base."""
    params = changed_params(selected)
    header = ["experiment", *params, *(column for column, _, _ in HEADLINE)]
    rows = []
    for experiment in selected:
        flat, metrics = params_of(experiment), metrics_of(experiment)
        rows.append([_name(experiment), *(_param(flat.get(key)) for key in params),
                     *(_fmt(metrics.get(path, {}).get(key)) for _, path, key in HEADLINE)])
    bases = []
    for experiment in selected:
        base = metrics_of(experiment).get(BASELINE, {})
        row = ["zero-shot base", *("" for _ in params),
               *(_fmt(base.get(key)) if path == "metrics/metrics.json" else ""
                 for _, path, key in HEADLINE)]
        if base and row not in bases:
            bases.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in [*rows, *bases]]
    return "\n".join(lines)


def configurations(selected: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The experiments grouped by every param but `train.seed`, in first-seen order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for experiment in selected:
        flat = {k: v for k, v in params_of(experiment).items() if k != TRAINING_SEED}
        groups.setdefault(json.dumps(flat, sort_keys=True), []).append(experiment)
    return list(groups.values())


def _matches(experiment: dict[str, Any], reference: str) -> bool:
    key, _, value = reference.partition("=")
    return params_of(experiment).get(key) == yaml.safe_load(value)  # 0 matches 0.0


def _seed(experiment: dict[str, Any]) -> object:
    return params_of(experiment).get(TRAINING_SEED)


def _references(group: list[dict[str, Any]], reference_group: list[dict[str, Any]] | None,
                tables: dict[str, Tables]) -> list[pd.DataFrame]:
    if reference_group is None:
        return [tables[_name(e)]["base"] for e in group]
    return [tables[_name(e)]["finetuned"] for e in reference_group]


def _paired_reference(experiment: dict[str, Any], reference_group: list[dict[str, Any]] | None,
                      tables: dict[str, Tables]) -> list[pd.DataFrame]:
    """The reference run of the same training seed (every reference run where none has it)."""
    if reference_group is None:
        return [tables[_name(experiment)]["base"]]
    same = [e for e in reference_group if _seed(e) == _seed(experiment)]
    return [tables[_name(e)]["finetuned"] for e in same or reference_group]


def _difference(value: Difference | None) -> str:
    if value is None:
        return "–"
    return f"{value.mean:+.3f} [{value.low:+.3f}, {value.high:+.3f}] {value.verdict}"


def _spread(value: Spread | None) -> str:
    if value is None:
        return "–"
    return f"{value.mean:.3f}" + ("" if value.sd is None else f" ± {value.sd:.3f}")


def render_comparisons(selected: list[dict[str, Any]], tables: dict[str, Tables],
                       reference: str | None = None, *, num_resamples: int = NUM_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> str:
    """Markdown: per configuration, CIDEr/CHAIR mean ± sd over training seeds and the paired
    difference with the reference (seeds pooled per image); then per experiment, its paired
    difference with the reference run of the same training seed. `reference` is `KEY=VALUE`
    naming the reference configuration (e.g. `assemble.max_region_ratio=0`); None: the
    zero-shot base. `tables` maps experiment names to their per-image tables."""
    groups = configurations(selected)
    reference_group = None
    if reference is not None:
        found = [group for group in groups if all(_matches(e, reference) for e in group)]
        if len(found) != 1:
            raise SystemExit(f"--reference {reference}: {len(found)} configurations match, "
                             "need exactly one")
        reference_group = found[0]
    against = BASE if reference is None else reference
    params = [key for key in changed_params(selected) if key != TRAINING_SEED]
    images = len(next(iter(tables.values()))["finetuned"])
    knobs = {"num_resamples": num_resamples, "seed": seed}
    lines = [f"Against {against}: paired differences over the same {images} val images, "
             f"{LEVEL:.0%} bootstrap interval ({num_resamples} resamples, seed {seed}); an "
             "interval containing 0 is \"not distinguishable\". CHAIR: lower is better.", "",
             "| configuration | " + " | ".join(params) + " | seeds | CIDEr (mean ± sd) | "
             "CIDEr 95 % CI | CHAIR_i | CHAIR_s | ΔCIDEr | ΔCHAIR_i | ΔCHAIR_s |",
             "|" + "---|" * (len(params) + 9)]
    for group in groups:
        runs = [tables[_name(e)]["finetuned"] for e in group]
        is_reference = group is reference_group
        summary: Summary = summarize(
            runs, None if is_reference else _references(group, reference_group, tables), **knobs)
        flat = params_of(group[0])
        name = ("reference: " if is_reference else "") + ", ".join(_name(e) for e in group)
        low, high = summary.cider_ci
        lines.append("| " + " | ".join([
            name, *(_param(flat.get(key)) for key in params), str(summary.seeds),
            _spread(summary.cider), f"[{low:.3f}, {high:.3f}]", _spread(summary.chair_i),
            _spread(summary.chair_s), *(_difference(d) for d in (
                summary.cider_difference, summary.chair_i_difference,
                summary.chair_s_difference))]) + " |")
    base = summarize(_references(selected, None, tables)[:1], None, **knobs)
    lines.append("| " + " | ".join([BASE, *("" for _ in params), "", _spread(base.cider),
                                    "[{:.3f}, {:.3f}]".format(*base.cider_ci),
                                    _spread(base.chair_i), _spread(base.chair_s),
                                    "", "", ""]) + " |")
    lines += ["", f"Per experiment, against {against} (same training seed):", "",
              f"| experiment | {TRAINING_SEED} | ΔCIDEr | ΔCHAIR_i | ΔCHAIR_s |",
              "|---|---|---|---|---|"]
    for experiment in selected:
        if reference_group is not None and any(experiment is e for e in reference_group):
            continue
        differences = difference([tables[_name(experiment)]["finetuned"]],
                                 _paired_reference(experiment, reference_group, tables), **knobs)
        lines.append(f"| {_name(experiment)} | {_param(_seed(experiment))} | "
                     + " | ".join(_difference(d) for d in differences) + " |")
    return "\n".join(lines)


def plot_csv(selected: list[dict[str, Any]], tables: dict[str, Tables], *,
             num_resamples: int = NUM_RESAMPLES, seed: int = BOOTSTRAP_SEED) -> str:
    """Per `clip_threshold` (sorted): regions kept, CIDEr (mean over training seeds), the
    95 % interval over images of the seed-pooled CIDEr, the sd over seeds and the seed count
    (`dvc plots` reads it)."""
    rows = []
    for group in configurations(selected):
        summary = summarize([tables[_name(e)]["finetuned"] for e in group], None,
                            num_resamples=num_resamples, seed=seed)
        rows.append([params_of(group[0]).get("clip_threshold"),
                     metrics_of(group[0]).get("metrics/augment.json", {}).get("regions_kept"),
                     *(round(value, 4) for value in (summary.cider.mean, *summary.cider_ci)),
                     None if summary.cider.sd is None else round(summary.cider.sd, 4),
                     summary.seeds])
    rows.sort(key=lambda row: row[0])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([PLOT_COLUMNS, *rows])
    return out.getvalue()


def select(found: list[dict[str, Any]], names: list[str], prefix: str | None
           ) -> list[dict[str, Any]]:
    """The named experiments (in the order given), those starting with `prefix` (oldest
    first), or the newest one."""
    if names:
        by_name = {_name(experiment): experiment for experiment in found}
        missing = [name for name in names if name not in by_name]
        if missing:
            raise SystemExit(f"no experiment {', '.join(missing)} in `dvc exp show`")
        return [by_name[name] for name in names]
    if prefix is not None:
        selected = [experiment for experiment in found if _name(experiment).startswith(prefix)]
        if not selected:
            raise SystemExit(f"no experiment named {prefix}* with results in `dvc exp show`")
        return selected[::-1]
    if not found:
        raise SystemExit("no experiment with results in `dvc exp show`")
    return found[:1]


def per_image_tables(experiment: dict[str, Any]) -> Tables:
    """The experiment's per-image scores, fine-tuned and base, from the DVC cache."""
    import dvc.api  # seconds to import: only once the experiments are chosen

    tables = {}
    for kind, path in (("finetuned", PER_IMAGE), ("base", PER_IMAGE_BASE)):
        with dvc.api.open(path, rev=experiment["rev"]) as handle:
            tables[kind] = pd.read_csv(handle)
    return tables


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", nargs="*", default=[], help="experiment names")
    parser.add_argument("--prefix", help="every experiment whose name starts with this")
    parser.add_argument("--plot", type=Path, help="write CIDEr and regions kept by threshold")
    parser.add_argument("--reference", metavar="KEY=VALUE",
                        help="compare against the configuration with this param value "
                             "(default: the zero-shot base)")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "dvc", "exp", "show", "--all-commits", "--json"]
    shown = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    selected = select(experiments(shown), args.exp, args.prefix)
    print(render(selected))
    tables = {_name(experiment): per_image_tables(experiment) for experiment in selected}
    print("\n" + render_comparisons(selected, tables, args.reference))
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.plot, plot_csv(selected, tables))
        print(f"\nplot data: {args.plot} (dvc plots show)")


if __name__ == "__main__":
    main()
