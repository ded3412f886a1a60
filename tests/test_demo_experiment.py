"""`make demo`, `make sweep` and a shared DVC remote end to end, smaller: the whole DAG as a
`dvc exp run --temp` experiment on a copy of the repo (params.yaml untouched, no warnings),
then a queued threshold grid and a second clone that take detect and clip_score from the
run-cache instead of running GroundingDINO and CLIP again."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
from itertools import dropwhile, takewhile
from pathlib import Path

import pytest

from tools.overrides import override_args

REPO = Path(__file__).resolve().parents[1]
SMALLER = ["-S", "demo.num_train=40", "-S", "demo.num_val=12"]
# Enough steps for the tiny captioner to beat the base on 12 val images (1 epoch, ~10 steps,
# did not with the demo CLIP trained on whole pictures).
DEMO_STEPS = ["-S", "train.max_steps=60"]
SWEEP = ["-S", "train.max_steps=10"]
UPSTREAM = ("demo", "phrases", "detect", "clip_score")

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n" \
                                 f"{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def _table(text: str) -> dict[str, dict[str, str]]:
    """The report's first Markdown table (the compact one): experiment -> {column: cell}."""
    lines = list(takewhile(lambda line: line.startswith("|"),
                           dropwhile(lambda line: not line.startswith("|"), text.splitlines())))
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


def _upstream_not_run(log: str, experiments: int) -> None:
    for stage in UPSTREAM:
        assert f"Running stage '{stage}'" not in log
        restored = re.findall(rf"Stage '{stage}' (is cached|didn't change)", log)
        assert len(restored) == experiments, (stage, log[-3000:])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """A git repo of the tracked files with the demo run as experiment `demo-test`."""
    root = tmp_path_factory.mktemp("team")
    repo = root / "repo"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HOME": str(root),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "t"]):
        _run(command, repo, env)
    log = _run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "demo-test",
                *override_args(repo / "configs" / "demo.yaml"), *SMALLER, *DEMO_STEPS], repo,
               env)
    return repo, env, log


def test_demo_experiment_ends_with_the_compact_table(demo) -> None:
    repo, env, log = demo
    params_before = (REPO / "params.yaml").read_bytes()
    table = _table(_run([sys.executable, "-m", "tools.report", "--exp", "demo-test"], repo,
                        env))

    assert (repo / "params.yaml").read_bytes() == params_before
    assert _run(["git", "status", "--porcelain", "--untracked-files=no"], repo, env) == ""
    assert "WARNING" not in log and "Warning" not in log, log[-3000:]
    assert list(table) == ["demo-test", "zero-shot base"]
    tuned, base = table["demo-test"], table["zero-shot base"]
    assert tuned["clip_threshold"] == "0.6" and int(tuned["regions kept"]) > 0
    assert float(tuned["CIDEr"]) > float(base["CIDEr"])
    assert float(tuned["train loss"]) > 0 and base["train loss"] == ""


def test_a_queued_threshold_sweep_reuses_detect_and_clip_score(demo) -> None:
    repo, env, _ = demo
    _run([sys.executable, "-m", "dvc", "exp", "run", "--queue", "-n", "sweep-test",
          *override_args(repo / "configs" / "demo.yaml"), *SMALLER, *SWEEP,
          "-S", "clip_threshold=0.4,0.8"], repo, env)
    log = _run([sys.executable, "-m", "dvc", "exp", "run", "--run-all", "-j", "1"], repo, env)
    report = _run([sys.executable, "-m", "tools.report", "--prefix", "sweep-test-",
                   "--plot", "plots/sweep/thresholds.csv"], repo, env)

    _upstream_not_run(log, experiments=2)
    assert log.count("Running stage 'assemble'") == 2
    table = _table(report)
    assert list(table) == ["sweep-test-1", "sweep-test-2", "zero-shot base"]
    assert [table[name]["clip_threshold"] for name in ("sweep-test-1", "sweep-test-2")] == \
        ["0.4", "0.8"]
    kept = [int(table[name]["regions kept"]) for name in ("sweep-test-1", "sweep-test-2")]
    assert kept[0] > kept[1]  # a lower threshold keeps more regions
    with open(repo / "plots" / "sweep" / "thresholds.csv", newline="") as handle:
        points = list(csv.DictReader(handle))
    assert [(p["clip_threshold"], int(p["regions_kept"])) for p in points] == \
        [("0.4", kept[0]), ("0.8", kept[1])]


def test_a_second_clone_takes_the_expensive_stages_from_the_remote(demo) -> None:
    """The committed default remote (`dvc-remote` beside the clone) is a real DVC remote."""
    repo, env, _ = demo
    origin = repo.parent / "origin.git"
    _run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], repo, env)
    _run(["git", "remote", "add", "origin", str(origin)], repo, env)
    _run(["git", "push", "-q", "origin", "main"], repo, env)
    _run([sys.executable, "-m", "dvc", "exp", "push", "--run-cache", "origin", "demo-test"],
         repo, env)
    assert (repo.parent / "dvc-remote" / "runs").is_dir()

    clone = repo.parent / "clone"
    _run(["git", "clone", "-q", str(origin), str(clone)], repo.parent, env)
    _run([sys.executable, "-m", "dvc", "exp", "pull", "--run-cache", "origin", "demo-test"],
         clone, env)
    log = _run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "-n", "clone-test",
                *override_args(clone / "configs" / "demo.yaml"), *SMALLER, *SWEEP,
                "-S", "clip_threshold=0.8"], clone, env)

    _upstream_not_run(log, experiments=1)
    assert "Running stage 'assemble'" in log
