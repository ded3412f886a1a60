"""Print an experiment's results as one table: zero-shot base vs fine-tuned, plus data and training.

    python -m stages.report --exp demo-20261126-120000   # default: the newest experiment
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

CAPTION_METRICS = ("bleu1", "bleu4", "meteor", "rougeL", "cider", "clipscore", "refclipscore",
                   "n_images")
AUGMENT_METRICS = ("images", "phrases", "candidates", "regions_kept", "keep_rate",
                   "full_examples", "region_examples")
TRAIN_METRICS = ("loss", "val_loss", "steps", "tokens_per_second")


def experiments(show: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every experiment in `dvc exp show --json` output, newest first."""
    found = []
    for baseline in show:
        for group in baseline.get("experiments") or []:
            for rev in group.get("revs", []):
                if rev.get("data"):
                    found.append(rev)
    return sorted(found, key=lambda rev: rev["data"].get("timestamp") or "", reverse=True)


def metrics_of(experiment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {path: entry.get("data") or {} for path, entry in
            experiment["data"].get("metrics", {}).items()}


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "–" if value is None else str(value)


def render(name: str, metrics: dict[str, dict[str, Any]]) -> str:
    base = metrics.get("metrics/baseline.json", {})
    tuned = metrics.get("metrics/metrics.json", {})
    lines = [f"## {name}", "", "| metric | zero-shot base | fine-tuned |", "|---|---|---|"]
    lines += [f"| {key} | {_fmt(base.get(key))} | {_fmt(tuned.get(key))} |"
              for key in CAPTION_METRICS if key in base or key in tuned]
    for title, path, keys in (("augmentation", "metrics/augment.json", AUGMENT_METRICS),
                              ("training", "metrics/train.json", TRAIN_METRICS)):
        values = metrics.get(path, {})
        shown = [f"{key} {_fmt(values[key])}" for key in keys if key in values]
        if shown:
            lines += ["", f"{title}: " + ", ".join(shown)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", help="experiment name (default: the newest)")
    args = parser.parse_args(argv)
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json"]
    shown = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    found = experiments(shown)
    if args.exp:
        found = [rev for rev in found if rev.get("name") == args.exp]
    if not found:
        raise SystemExit(f"no experiment {args.exp or ''} found in `dvc exp show`")
    print(render(found[0].get("name") or found[0]["rev"][:7], metrics_of(found[0])))


if __name__ == "__main__":
    main()
