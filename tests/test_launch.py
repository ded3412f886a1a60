"""The stage launcher: one process runs the stage in place, N exec `accelerate launch`, and
the count stays out of DVC's view of every stage (so changing it re-runs nothing)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from stage_runs import write_params

from src import launch

REPO = Path(__file__).resolve().parents[1]


def _refuse_exec(*args: object) -> None:
    raise AssertionError(f"exec'd {args}")


def test_one_process_runs_the_stage_in_this_process(demo_coco: Path, tiny_models: dict[str, Path],
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "execvp", _refuse_exec)
    params = write_params(tmp_path / "params.yaml", tiny_models)
    launch.main(["src.augment.phrases",
                 "--captions", str(demo_coco / "annotations" / "captions_train2017.json"),
                 "--captions-out", str(tmp_path / "captions.parquet"),
                 "--phrases-out", str(tmp_path / "phrases.parquet"), "--params", str(params)])
    assert pd.read_parquet(tmp_path / "phrases.parquet")["image_id"].nunique() == 24


def test_n_processes_exec_accelerate_launch(tiny_models: dict[str, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execvp", lambda file, argv: calls.append((file, argv)))
    args = ["--out", "x.parquet", f"--params={tmp_path / 'p.yaml'}"]
    write_params(tmp_path / "p.yaml", tiny_models, **{"launch.num_processes": 3})
    launch.main(["src.augment.detect", *args])
    write_params(tmp_path / "p.yaml", tiny_models, **{
        "launch.num_processes": 8, "launch.config_file": "configs/accelerate/multi_gpu.yaml"})
    launch.main(["src.train.finetune_llava", *args])
    head = [sys.executable, "-m", "accelerate.commands.launch"]
    assert calls == [
        (sys.executable, [*head, "--main_process_port", "0", "--multi_gpu",
                          "--num_processes", "3", "-m", "src.augment.detect", *args]),
        (sys.executable, [*head, "--config_file", "configs/accelerate/multi_gpu.yaml",
                          "--multi_gpu", "--num_processes", "8", "-m",
                          "src.train.finetune_llava", *args])]


def test_the_params_file_is_the_stages_own() -> None:
    assert launch.params_path(["--out", "a", "--params", "b.yaml"]) == Path("b.yaml")
    assert launch.params_path(["--params=c.yaml"]) == Path("c.yaml")
    assert launch.params_path(["--out", "a"]) == Path("params.yaml")


def test_the_data_parallel_stages_launch_and_dvc_never_sees_the_count() -> None:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    launched = {name for name, stage in stages.items()
                if stage["cmd"].startswith("python -m src.launch ")}
    assert launched == {"detect", "clip_score", "train", "evaluate", "evaluate_base"}
    for stage in stages.values():
        assert "launch" not in stage["cmd"].replace("src.launch", "")
        assert not [key for key in stage.get("params", []) if str(key).startswith("launch")]
