"""`dvc repro` on two CPU processes (gloo) through launch.num_processes: detect, clip_score,
train and both evaluations run on two processes and give one process's outputs, and the
count never makes DVC re-run a stage. The demo DAG at 12 train and 4 val images."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml
from library_helpers import flat_metrics
from stage_runs import copy_working_tree

from src.data.tables import read_table

REPO = Path(__file__).resolve().parents[1]


def _copy_repo(target: Path, **params: object) -> Path:
    """The working tree (committed or not) without outputs, caches or the venv, as a git repo."""
    copy_working_tree(target)
    raw = yaml.safe_load((target / "params.yaml").read_text(encoding="utf-8"))
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    for key, value in {**demo, **params}.items():
        *parents, leaf = key.split(".")
        node = raw
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    (target / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t "
                   "commit -qm t", shell=True, cwd=target, check=True)
    return target


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "ACCELERATE_USE_CPU": "1",
           "OMP_NUM_THREADS": "1",
           "PATH": f"{repo / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(repo / ".venv" / "bin" / "dvc"), *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


EXECUTION = ("processes", "second", "time", "per_s")  # differ by design, or by the clock


def _outcomes(metrics: dict, prefix: str = "") -> dict[str, object]:
    """Flat {dotted key: value} of a metrics file, without its execution figures."""
    flat: dict[str, object] = {}
    for key, value in metrics.items():
        if any(word in key for word in EXECUTION):
            continue
        if isinstance(value, dict):
            flat.update(_outcomes(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


SMALL = {"demo.num_train": 12, "demo.num_val": 4, "detect.num_workers": 0,
         "clip_score.num_workers": 0, "train.num_workers": 0, "evaluate.num_workers": 0,
         "evaluate.meteor": False, "evaluate.batch_size": 2, "train.epochs": 1,
         "train.bsz": 4}


@pytest.mark.slow
def test_dvc_repro_on_two_processes_gives_the_outputs_of_one(tmp_path: Path) -> None:
    # Only the count differs. train.batch_size (8, configs/demo.yaml) is each step's captions
    # on any count: 4 x accumulation 2 on 1 process, 4 x 2 processes; each epoch's 84
    # examples in 10 steps of 8 and a short one of 4, no caption repeated.
    one = _copy_repo(tmp_path / "one", **SMALL)
    two = _copy_repo(tmp_path / "two", **SMALL, **{"launch.num_processes": 2})
    _dvc(one, "repro")
    log = _dvc(two, "repro")
    assert log.count("on this process of 2") >= 4  # detect, clip_score, evaluate, evaluate_base
    assert "x processes 2 =" in log  # train's banner

    for table in ("data/interim/detections.parquet", "data/interim/regions.parquet"):
        pd.testing.assert_frame_equal(read_table(two / table)[0], read_table(one / table)[0])
    assert (two / "data/processed/train.jsonl").read_bytes() == \
        (one / "data/processed/train.jsonl").read_bytes()
    for name in ("metrics/train.json", "metrics/metrics.json", "metrics/baseline.json"):
        got, want = (_outcomes(json.loads((repo / name).read_text())) for repo in (two, one))
        assert got.keys() == want.keys() and got, name
        texts = {key for key, value in want.items() if isinstance(value, str)}  # model identity
        assert {key: got[key] for key in texts} == {key: want[key] for key in texts}, name
        got, want = ({k: v for k, v in flat.items() if k not in texts} for flat in (got, want))
        assert flat_metrics(got) == pytest.approx(flat_metrics(want), rel=1e-3, abs=1e-4), name

    # The count and the per-device batch are execution knobs: changing them leaves every
    # stage up to date.
    raw = yaml.safe_load((two / "params.yaml").read_text(encoding="utf-8"))
    raw["launch"]["num_processes"] = 1
    raw["train"]["bsz"] = 2
    (two / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    assert "Data and pipelines are up to date" in _dvc(two, "status")
