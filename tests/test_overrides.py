"""configs/demo.yaml turns into `dvc exp run -S` arguments that DVC writes back verbatim."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tools.overrides import main, override_args

REPO = Path(__file__).resolve().parents[1]


def test_values_survive_dvc_exp_run(tmp_path: Path) -> None:
    """A regex with Hydra-reserved characters, a negative float and a bool round-trip."""
    overrides = {"t.regex": r".*language_model.*\.(q_proj|v_proj)|lm_head", "a": -0.2,
                 "t.flag": True, "t.lr": 1.0e-3, "t.text": "it's {phrase}"}
    (tmp_path / "o.yaml").write_text(yaml.safe_dump(overrides))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text(yaml.safe_dump(
        {"a": 1.0, "t": {"regex": "x", "flag": False, "lr": 0.1, "text": "y"}}))
    (repo / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"s": {"cmd": "true", "params": ["a", "t"]}}}))
    env = {"DVC_NO_ANALYTICS": "1", "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(tmp_path)}
    for command in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "init"],
                    [sys.executable, "-m", "dvc", "exp", "run",
                     *override_args(tmp_path / "o.yaml")]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    written = yaml.safe_load((repo / "params.yaml").read_text())
    assert written == {"a": -0.2, "t": {"regex": overrides["t.regex"], "flag": True,
                                        "lr": 1.0e-3, "text": "it's {phrase}"}}


def test_seeds_repeat_every_configuration_per_training_seed(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`make ablation SEEDS=3`: the arm grid, then training seeds 0, 1 and 2 (DVC queues the
    cartesian product: 2 arms x 3 seeds)."""
    main([str(REPO / "configs/sweep-demo.yaml"), "--set", "assemble.max_region_ratio=0,1.0",
          "--seeds", "3"])
    assert capsys.readouterr().out.splitlines() == [
        "-S", "train.max_steps=800", "-S", "assemble.max_region_ratio=0,1.0",
        "-S", "train.seed=0,1,2"]
    with pytest.raises(SystemExit, match="--seeds 0"):
        main(["--seeds", "0"])
