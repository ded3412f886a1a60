"""`make demo` end to end, smaller: the whole DAG as a `dvc exp run --temp` experiment on a
copy of the repo, ending with the base vs fine-tuned table; params.yaml stays untouched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from stages.overrides import override_args

REPO = Path(__file__).resolve().parents[1]
SMALLER = ["-S", "demo.num_train=40", "-S", "demo.num_val=12", "-S", "train.epochs=1"]


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_demo_experiment_ends_with_the_metrics_table(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "t"]):
        _run(command, repo, env)
    params_before = (repo / "params.yaml").read_bytes()

    _run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "demo-test",
          *override_args(repo / "configs" / "demo.yaml"), *SMALLER], repo, env)
    table = _run([sys.executable, "-m", "stages.report", "--exp", "demo-test"], repo, env)

    assert (repo / "params.yaml").read_bytes() == params_before
    assert _run(["git", "status", "--porcelain", "--untracked-files=no"], repo, env) == ""
    cider = re.search(r"^\| cider \| (\S+) \| (\S+) \|$", table, re.MULTILINE)
    assert cider, table
    base, tuned = (float(value) for value in cider.groups())
    assert tuned > base
    assert "augmentation: images 40" in table
    assert re.search(r"training: loss [0-9.]+, val_loss [0-9.]+, steps [0-9]+", table)
