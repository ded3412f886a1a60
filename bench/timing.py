"""Wall-clock timing for the benchmark scripts: device work is synchronised around each call."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch


def seconds(run: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of `run`, waiting for queued device work before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def median_seconds(run: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median of `repeats` timed calls after one untimed warm-up call."""
    run()
    times = sorted(seconds(run, device) for _ in range(repeats))
    return times[len(times) // 2]
