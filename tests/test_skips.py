"""The skip counter: one count per skipped item, merged across accelerate processes (2 CPU
processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.data.skips import Skip, SkipCounter

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
import json
import sys
from pathlib import Path

import torch
from src.data.skips import Skip, SkipCounter
from src.models.device_policy import process_group

with process_group(torch.device("cpu")) as state:
    rank = state.process_index
    counter = SkipCounter.of([Skip(10 + rank, "missing"), *([Skip(7, "empty")] if rank else [])])
    merged = counter.gathered()
    report = {"rank": rank, "processes": state.num_processes, "merged": merged.as_dict()}
report["group_left_up"] = torch.distributed.is_initialized()
Path(sys.argv[1], f"{rank}.json").write_text(json.dumps(report))
"""


def test_an_item_skipped_again_counts_once() -> None:
    """A second visit (next epoch, a resumed run's carried ids, another process) of the
    same item for the same reason is not a second skip; another item or reason is."""
    counter = SkipCounter({"missing": [3]})  # carried from a checkpoint
    for skip in [Skip(3, "missing"), Skip(4, "missing"), Skip(4, "missing"), Skip(4, "bad_box")]:
        counter.add(skip)
    counter.update(SkipCounter.of([Skip(4, "missing"), Skip(5, "missing")]))
    assert counter.as_dict() == {"bad_box": [4], "missing": [3, 4, 5]}
    assert counter.counts() == {"bad_box": 1, "missing": 3} and counter.total() == 4
    assert SkipCounter({"missing": [1, 1, 2]}).counts() == {"missing": 2}


@pytest.mark.slow
def test_two_processes_merge_their_skips(tmp_path: Path) -> None:
    script = tmp_path / "gather.py"
    script.write_text(SCRIPT)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", "29531", str(script), str(tmp_path)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # One file per process: two processes printing at once can interleave on one line.
    reports = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["processes"] for r in reports] == [2, 2]
    expected = {"empty": [7], "missing": [10, 11]}
    assert [r["merged"] for r in reports] == [expected, expected]
    assert [r["group_left_up"] for r in reports] == [False, False]  # process_group tore it down
