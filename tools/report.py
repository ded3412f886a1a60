"""Print experiments side by side: the params that differ and the headline metrics, with the
zero-shot base on the side; optionally write CIDEr and regions kept by threshold as a DVC plot.

    python -m tools.report                         # the newest experiment
    python -m tools.report --exp demo-20261126-120000
    python -m tools.report --prefix sweep-20261126-120000 --plot plots/sweep/thresholds.csv

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

from src.data.atomic import atomic_write_text

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
PLOT_COLUMNS = ("clip_threshold", "regions_kept", "cider")


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


def plot_csv(selected: list[dict[str, Any]]) -> str:
    """CIDEr and regions kept by `clip_threshold`, sorted by threshold (`dvc plots` reads it)."""
    rows = sorted(([params_of(e).get("clip_threshold"),
                    metrics_of(e).get("metrics/augment.json", {}).get("regions_kept"),
                    metrics_of(e).get("metrics/metrics.json", {}).get("cider")]
                   for e in selected), key=lambda row: row[0])
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", nargs="*", default=[], help="experiment names")
    parser.add_argument("--prefix", help="every experiment whose name starts with this")
    parser.add_argument("--plot", type=Path, help="write CIDEr and regions kept by threshold")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "dvc", "exp", "show", "--all-commits", "--json"]
    shown = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    selected = select(experiments(shown), args.exp, args.prefix)
    print(render(selected))
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.plot, plot_csv(selected))
        print(f"\nplot data: {args.plot} (dvc plots show)")


if __name__ == "__main__":
    main()
