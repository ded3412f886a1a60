"""Length-grouped batches: similar token lengths share a batch, so padding is small.

As in HF's LengthGroupedSampler: shuffle, cut into mega-batches of `MEGABATCH` batches,
sort each by length, cut into batches, shuffle the batches. The order depends only on
(seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

MEGABATCH = 50  # batches per sorted group: larger = less padding, less random batch mixes


class LengthGroupedBatches:
    """A batch sampler (lists of dataset indices) of `batch_size`, the last one possibly short.

    `batch_size` is the global batch; accelerate splits each batch across processes
    (`split_batches=True`). Set the epoch with `use_epoch` before iterating; the method is
    deliberately not named `set_epoch`, which accelerate calls with its own pass counter.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.drop_last = False
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
        return full + short  # a short batch only last: accelerate drops one in the middle

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())
