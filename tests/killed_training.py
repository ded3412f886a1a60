"""`python tests/killed_training.py N ARGS...`: the seed training command with ARGS, killed
(KeyboardInterrupt) at its Nth micro-step on every process: a run `accelerate launch` starts
and a kill ends between checkpoints, at the same step on each rank."""

from __future__ import annotations

import sys

from src.train import finetune_llava, loop

kill_at = int(sys.argv[1])
original, calls = loop.Trainer._micro_step, []


def killed(self, batch, window):
    calls.append(1)
    if len(calls) == kill_at:
        raise KeyboardInterrupt
    return original(self, batch, window)


loop.Trainer._micro_step = killed
finetune_llava.main(sys.argv[2:])
