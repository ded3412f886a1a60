"""Length-grouped step batches, and each process's micro-batches of them.

`LengthGroupedBatches` decides which captions form each optimizer step, as in HF's
LengthGroupedSampler: shuffle, cut into mega-batches of `MEGABATCH` batches, sort each by
length, cut into batches, shuffle the batches. The order depends only on (seed, epoch,
batch size, lengths), never on the process count or the per-device batch, so every launch
trains on the same steps, and a resumed run (on any count) sees the batches of an
uninterrupted one.

`MicroBatches` deals each step batch to the processes as `accumulation` rounds of one
micro-batch of at most `bsz` captions per process. No caption is repeated or dropped: a short
last step fills its first slots and leaves the rest empty (the trainer runs an empty
micro-batch as a zero-weighted dummy, so every process makes the same calls).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

from src.params import accumulation_steps

MEGABATCH = 50  # batches per sorted group: larger = less padding, less random batch mixes


class LengthGroupedBatches:
    """The step batches of an epoch: lists of `batch_size` dataset indices, the last one
    possibly short. Set the epoch with `use_epoch` before iterating."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        group = self.batch_size * MEGABATCH
        batches = []
        for start in range(0, len(order), group):
            mega = sorted(order[start:start + group], key=lambda i: -self.lengths[i])
            batches += [mega[i:i + self.batch_size] for i in range(0, len(mega), self.batch_size)]
        full = [batch for batch in batches if len(batch) == self.batch_size]
        short = [batch for batch in batches if len(batch) < self.batch_size]
        rng.shuffle(full)
        return full + short  # the short one last, so it never splits the epoch

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())


class MicroBatches:
    """A batch sampler for one process: for each step batch of `steps`, `accumulation`
    micro-batches. Slot k * num_processes + p of a step (round k, process p) holds the step's
    captions k * num_processes * bsz + p * bsz onwards, at most `bsz` of them.

    It is not named a sampler with `set_epoch`: accelerate calls that with its own counter.
    """

    def __init__(self, steps: LengthGroupedBatches, bsz: int, num_processes: int,
                 process_index: int) -> None:
        self.accumulation = accumulation_steps(steps.batch_size, bsz, num_processes)
        self.steps = steps
        self.bsz = bsz
        self.num_processes = num_processes
        self.process_index = process_index
        self.skip_steps = 0

    def use_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        """Iterate `epoch` from its step batch `skip_steps` on (a resumed run)."""
        self.steps.use_epoch(epoch)
        self.skip_steps = skip_steps

    def __len__(self) -> int:
        return (len(self.steps) - self.skip_steps) * self.accumulation

    def share(self, step: Sequence[int]) -> list[list[int]]:
        """This process's micro-batches of one step batch, in round order."""
        starts = [(k * self.num_processes + self.process_index) * self.bsz
                  for k in range(self.accumulation)]
        return [list(step[start:start + self.bsz]) for start in starts]

    def __iter__(self) -> Iterator[list[int]]:
        for step in self.steps.batches()[self.skip_steps:]:
            yield from self.share(step)
