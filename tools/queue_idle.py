"""Wait until no DVC experiment-queue worker of this repo is alive, so that experiments queued
next are all run.

After `dvc exp run --run-all` returns, its worker idles about 10 s before it exits, and a
worker that exits can take a just-queued experiment with it: the task stays `Running` in
`dvc queue status` with no worker, and `--run-all` waits for it for ever (observed with DVC
3.67; treeverse/dvc#8165, #10562). `make sweep` and `make ablation` call this before queueing.

    python -m tools.queue_idle [--timeout 120]

Reads the workers' process records (`.dvc/tmp/exps/celery/dvc-exp-worker-*.json`, written by
dvc-task: `returncode` is null while the worker runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

WORKERS = Path(".dvc/tmp/exps/celery")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def live_workers(workers_dir: Path = WORKERS) -> list[int]:
    """The pids of this repo's queue workers that are still running."""
    pids = []
    for record in sorted(workers_dir.glob("dvc-exp-worker-*.json")):
        try:
            info = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # being rewritten: look again next time
            continue
        if info.get("returncode") is None and _alive(int(info["pid"])):
            pids.append(int(info["pid"]))
    return pids


def wait_idle(timeout: float, workers_dir: Path = WORKERS, poll: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while pids := live_workers(workers_dir):
        if time.monotonic() > deadline:
            raise SystemExit(f"DVC queue workers {pids} still running after {timeout:.0f} s: "
                             "`dvc queue status`, or `dvc queue stop` to end them")
        time.sleep(poll)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=120.0)
    wait_idle(parser.parse_args(argv).timeout)


if __name__ == "__main__":
    main()
