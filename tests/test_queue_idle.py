"""`tools.queue_idle` waits for live DVC queue workers only: their dvc-task records say
running (`returncode` null) and their process exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tools.queue_idle import live_workers, wait_idle


def _record(workers: Path, n: int, pid: int, returncode: int | None) -> None:
    workers.mkdir(parents=True, exist_ok=True)
    (workers / f"dvc-exp-worker-{n}.json").write_text(json.dumps(
        {"pid": pid, "stdin": None, "stdout": "w.out", "stderr": None,
         "returncode": returncode}))


def test_only_running_workers_with_a_live_process_count(tmp_path: Path) -> None:
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    _record(tmp_path, 1, os.getpid(), None)  # running
    _record(tmp_path, 2, os.getpid(), 0)  # exited, its record says so
    _record(tmp_path, 3, int(ended.stdout), None)  # killed before it could say so
    (tmp_path / "dvc-exp-worker-4.json").write_text("{")  # being rewritten
    assert live_workers(tmp_path) == [os.getpid()]
    assert live_workers(tmp_path / "no-queue-yet") == []


def test_waiting_ends_when_the_worker_exits_and_times_out_naming_it(tmp_path: Path) -> None:
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1.5)"])
    _record(tmp_path, 1, worker.pid, None)
    with pytest.raises(SystemExit, match=rf"workers \[{worker.pid}\] still running"):
        wait_idle(0.2, tmp_path, poll=0.05)
    threading.Thread(target=worker.wait).start()  # reaped as it exits, as DVC's worker is
    wait_idle(10.0, tmp_path, poll=0.05)
    with pytest.raises(ProcessLookupError):  # it ended: its pid is gone, not merely idle
        os.kill(worker.pid, 0)
    assert worker.wait(timeout=5) == 0  # the reaping thread may not have stored it yet
