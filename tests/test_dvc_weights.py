"""Model weights are dvc.yaml deps: with the repo's own dvc.yaml and a real `dvc status`,
replacing a model's local weights, or pinning a hub model to another revision, changes
exactly the stages that load that model, and an execution knob changes nothing.

Each repo is a copy of the project's pipeline files with every other dep and out stood in by
a small file, recorded with `dvc commit` (no stage runs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
OWN_FOLDERS = {"detector": "weights/detector", "clip_model": "weights/clip",
               "model": "weights/llava"}
DEMO_FOLDERS = {key: DEMO[f"weights.{key}"] for key in OWN_FOLDERS}
# The stages that load each model.
LOADED_BY = [("detector", {"detect"}),
             ("clip_model", {"clip_score", "evaluate", "evaluate_base"}),
             ("model", {"train", "evaluate", "evaluate_base"})]


def _dvc(repo: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, text=True,
                          capture_output=True, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    assert done.returncode == 0, f"dvc {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def status(repo: Path) -> dict[str, list]:
    return json.loads(_dvc(repo, "status", "--json") or "{}")


def _paths(entries: list) -> list[str]:
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


def _build(root: Path, folders: dict[str, str] | None) -> Path:
    """The pipeline on the demo profile with the models' weights in `folders`, or (None) at
    params.yaml's hub ids with their stand-in file, committed."""
    for name in ("dvc.yaml", "params.yaml", "src", "assets", "configs"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, root / name)
    params = yaml.safe_load((root / "params.yaml").read_text(encoding="utf-8"))
    params["profile"] = "demo"
    if folders is not None:
        params.update(weights=folders,
                      **{f"{model}_id": folder for model, folder in folders.items()})
        for folder in folders.values():
            (root / folder).mkdir(parents=True)
            (root / folder / "config.json").write_text("{}")
            (root / folder / "model.safetensors").write_bytes(b"weights")
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    words = {"${profile}": "demo",
             **{f"${{weights.{k}}}": v for k, v in params["weights"].items()}}
    paths = set()
    for stage in yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"].values():
        for kind in ("deps", "outs", "metrics", "plots"):
            for path in _paths(stage.get(kind, [])):
                for word, value in words.items():
                    path = path.replace(word, value)
                paths.add(path)
    for path in sorted(paths):
        if not (root / path).exists() and not any(p.startswith(f"{path}/") for p in paths):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_text(path)
    _dvc(root, "init", "--no-scm")
    _dvc(root, "commit", "--force")
    assert status(root) == {}
    return root


@pytest.fixture(scope="module")
def own_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("own-folders"), OWN_FOLDERS)


def _replace(weights: Path) -> bytes:
    old = weights.read_bytes()
    weights.write_bytes(b"retrain")
    return old


def _changed_deps(report: dict[str, list], stage: str) -> set[str]:
    return {path for change in report[stage] if isinstance(change, dict)
            for path in change.get("changed deps", {})}


@pytest.fixture(scope="module")
def hub_ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("hub-ids"), None)


@pytest.mark.parametrize(("model", "stages"), LOADED_BY)
def test_replacing_weights_changes_exactly_the_stages_that_load_them(
        own_folders: Path, model: str, stages: set[str]) -> None:
    weights = own_folders / OWN_FOLDERS[model] / "model.safetensors"
    old = _replace(weights)
    try:
        report = status(own_folders)
        assert set(report) == stages
        assert all(_changed_deps(report, stage) == {OWN_FOLDERS[model]} for stage in stages)
    finally:
        weights.write_bytes(old)
    assert status(own_folders) == {}


def _changed_params(report: dict[str, list], stage: str) -> dict[str, str]:
    return {key: how for change in report[stage] if isinstance(change, dict)
            for key, how in change.get("changed deps", {}).get("params.yaml", {}).items()}


@pytest.mark.parametrize(("model", "stages"), LOADED_BY)
def test_pinning_a_hub_revision_changes_exactly_the_stages_that_load_the_model(
        hub_ids: Path, model: str, stages: set[str]) -> None:
    """What `dvc exp run -S model_revision=<commit>` does to params.yaml: from the unpinned
    id (null, whose stand-in file never changes, so DVC cannot see its main branch move) to
    a commit, then, once that run is recorded, to another commit."""
    params_file = hub_ids / "params.yaml"
    text = params_file.read_text(encoding="utf-8")
    try:
        for revision in ("1" * 40, "2" * 40):
            params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
            params[f"{model}_revision"] = revision
            params_file.write_text(yaml.safe_dump(params), encoding="utf-8")
            report = status(hub_ids)
            assert set(report) == stages
            assert all(_changed_params(report, stage) == {f"{model}_revision": "modified"}
                       for stage in stages)
            _dvc(hub_ids, "commit", "--force")  # the run at this pin, recorded
    finally:
        params_file.write_text(text, encoding="utf-8")
        _dvc(hub_ids, "commit", "--force")
    assert status(hub_ids) == {}


def test_an_execution_knob_changes_nothing(own_folders: Path) -> None:
    params_file = own_folders / "params.yaml"
    text = params_file.read_text(encoding="utf-8")
    params = yaml.safe_load(text)
    params["detect"]["batch_size"] += 8
    params["evaluate"]["batch_size"] += 8
    params["clip_score"]["batch_size"] += 8
    params_file.write_text(yaml.safe_dump(params), encoding="utf-8")
    try:
        assert status(own_folders) == {}
    finally:
        params_file.write_text(text, encoding="utf-8")


def test_the_demo_models_are_deps_of_the_stages_that_load_them(
        tmp_path: Path) -> None:
    """configs/demo.yaml: the tiny models are inside the demo stage's out, so replacing one
    also shows as a changed out of `demo` (which `dvc repro` would rebuild)."""
    repo = _build(tmp_path, DEMO_FOLDERS)
    _replace(repo / DEMO_FOLDERS["detector"] / "model.safetensors")
    report = status(repo)
    assert set(report) == {"demo", "detect"}
    assert _changed_deps(report, "detect") == {DEMO_FOLDERS["detector"]}
    assert _changed_deps(report, "demo") == set()
