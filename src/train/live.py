"""dvclive curves (loss, val_loss, lr, tokens_per_second by step) for `dvc plots show`."""

from __future__ import annotations

import csv
from pathlib import Path

from dvclive import Live

from src.data.atomic import atomic_write_text


def trim_history(live_dir: Path, last_step: int) -> None:
    """Drop logged rows after `last_step` (logged after the checkpoint a run resumes from),
    so a resumed curve has no doubled steps."""
    for tsv in (Path(live_dir) / "plots" / "metrics").rglob("*.tsv"):
        with open(tsv, newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))
        if not rows:
            continue
        step_column = rows[0].index("step")
        kept = [rows[0]] + [row for row in rows[1:] if int(row[step_column]) <= last_step]
        atomic_write_text(tsv, "".join("\t".join(row) + "\n" for row in kept))


class LiveMetrics:
    """A metrics sink over dvclive: `sink(step, {"loss": ...})`. No dvclive summary
    (metrics.json): metrics/train.json is the run's summary, declared in dvc.yaml."""

    def __init__(self, live_dir: Path, resume_step: int | None) -> None:
        if resume_step is not None:
            trim_history(live_dir, resume_step)
        # dvcyaml=None: dvc.yaml already declares the plots; never let dvclive edit it.
        self.live = Live(dir=str(live_dir), resume=resume_step is not None, dvcyaml=None,
                         save_dvc_exp=False)

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.live.step = step
        for name, value in metrics.items():
            self.live.log_metric(name, value)
