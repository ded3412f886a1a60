"""`dvc exp run -S train.seed=1` on the demo re-runs `train` and `evaluate` only.

DVC itself decides: its params dependencies compare the demo's values (what dvc.lock would
hold after `make demo`) with the changed params.yaml, and its stage graph carries a change
downstream. Running the demo for this would take minutes; nothing here trains.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import networkx as nx
import yaml
from dvc.dependency.param import ParamsDependency
from dvc.repo import Repo

REPO = Path(__file__).resolve().parents[1]


def _demo_params(**overrides: object) -> dict:
    """params.yaml with configs/demo.yaml and `overrides` (dotted keys) applied."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    flat = yaml.safe_load((REPO / "configs/demo.yaml").read_text(encoding="utf-8"))
    for key, value in {**flat, **overrides}.items():
        *parents, last = key.split(".")
        node = params
        for name in parents:
            node = node[name]
        node[last] = value
    return params


def stages_rerun(tmp_path: Path, **overrides: object) -> set[str]:
    """The stages DVC would re-run after `-S key=value` for each override, from a demo state."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    Repo.init(tmp_path)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(_demo_params()), encoding="utf-8")
    locked = {stage.name: [dep.read_params() for dep in stage.deps
                                 if isinstance(dep, ParamsDependency)]
              for stage in Repo(tmp_path).index.stages}
    params_file.write_text(yaml.safe_dump(_demo_params(**overrides)), encoding="utf-8")
    index = Repo(tmp_path).index
    changed = set()
    for stage in index.stages:
        deps = [dep for dep in stage.deps if isinstance(dep, ParamsDependency)]
        for dep, values in zip(deps, locked[stage.name], strict=True):
            dep.fill_values(values)
            if dep.workspace_status():
                changed.add(stage)
    # Graph edges point from a stage to the stages whose outputs it reads.
    downstream = set(changed).union(*(nx.ancestors(index.graph, stage) for stage in changed))
    return {stage.name for stage in downstream}


def test_a_training_seed_reruns_training_and_evaluation_only(tmp_path: Path) -> None:
    assert stages_rerun(tmp_path, **{"train.seed": 1}) == {"train", "evaluate"}


def test_the_data_seed_rebuilds_the_demo_world(tmp_path: Path) -> None:
    """The check can see upstream re-runs: `seed` still chooses the data."""
    assert {"demo", "phrases", "detect", "clip_score", "assemble", "train",
            "evaluate"} <= stages_rerun(tmp_path, seed=1)


def test_the_step_batch_reruns_training_the_per_device_batch_nothing(tmp_path: Path) -> None:
    """train.batch_size (captions per optimizer step) is a hyperparameter; train.bsz, the
    workers and the checkpoint spacing are execution knobs: the same adapter on any value."""
    (tmp_path / "step").mkdir()
    (tmp_path / "knobs").mkdir()
    assert stages_rerun(tmp_path / "step", **{"train.batch_size": 16}) == {"train", "evaluate"}
    assert stages_rerun(tmp_path / "knobs", **{"train.bsz": 2, "train.num_workers": 0,
                                               "train.save_every_minutes": 1}) == set()
