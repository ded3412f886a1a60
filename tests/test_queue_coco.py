"""Queued and --temp experiments run in a copy of the commit, where a git-ignored data/coco
is missing. An absolute symlink committed as data/coco is in every copy (the README's recipe
for the real run, under the project's own .gitignore). A learning test of DVC itself, in a
scratch repository."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DVC = [sys.executable, "-m", "dvc"]
STAGE = """stages:
  phrases:
    cmd: cat data/coco/annotations/captions.json > out.txt
    deps: [data/coco/annotations/captions.json]
    params: [x]
    outs: [out.txt]
"""


def _run(repo: Path, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DVC_NO_ANALYTICS": "1"})


@pytest.mark.slow
def test_a_temp_experiment_finds_coco_through_a_committed_absolute_link(tmp_path: Path) -> None:
    coco = tmp_path / "datasets" / "coco2017"  # the download, outside the repository
    (coco / "annotations").mkdir(parents=True)
    (coco / "annotations" / "captions.json").write_text('{"a": 1}')
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    (repo / ".gitignore").write_text((REPO / ".gitignore").read_text(encoding="utf-8"))
    (repo / "params.yaml").write_text("x: 1\n")
    (repo / "dvc.yaml").write_text(STAGE)
    (repo / "data" / "coco").symlink_to(coco.resolve())
    for command in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"],
                    ["git", "config", "user.name", "t"], [*DVC, "init", "-q"],
                    ["git", "add", "-A"], ["git", "commit", "-qm", "init"]):
        assert _run(repo, *command).returncode == 0, command

    missing = _run(repo, *DVC, "exp", "run", "--temp", "-S", "x=2")  # the link is ignored
    assert missing.returncode != 0
    assert "data/coco" in missing.stderr + missing.stdout

    for command in (["git", "add", "-f", "data/coco"], ["git", "commit", "-qm", "COCO"]):
        assert _run(repo, *command).returncode == 0, command
    found = _run(repo, *DVC, "exp", "run", "--temp", "-S", "x=3")
    assert found.returncode == 0, found.stderr[-2000:]
    shown = _run(repo, *DVC, "exp", "show", "--json")
    assert shown.returncode == 0 and '"x": 3' in json.dumps(json.loads(shown.stdout))
