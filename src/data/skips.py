"""Skipped inputs: one picklable record per skip, and one counter that merges them.

A `Skip` is what a DataLoader worker returns in place of an item it could not read (an
exception would not cross the process boundary intact), what a shard stores, and what a
stage counts. A `SkipCounter` keeps each reason's item ids, so counts survive merging the
parts of a run: batches from workers, finished shards, and accelerate processes.

Most reasons describe the file as it was when read (missing, empty, unreadable,
truncated): a copy still in progress, a disk not mounted, a file restored since. A
resumed run tries those items again. Only FINAL_REASONS follow from what the item is and
can never read otherwise under the same run's fingerprint.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

from accelerate.utils import gather_object

logger = logging.getLogger(__name__)

# A relative path that leaves the image root; an image too large to decode safely.
FINAL_REASONS = frozenset({"path_escape", "decompression_bomb"})


@dataclass(frozen=True)
class Skip:
    """An item left out, and why (`reason`: a short snake_case word such as "truncated")."""

    item: Hashable  # the id of the skipped item: an image id, an example id
    reason: str
    path: str = ""  # the input as given (relative image path), for the log
    detail: str = ""

    def __str__(self) -> str:
        where = f" ({self.path})" if self.path else ""
        return f"{self.item}{where}: {self.reason}{f' - {self.detail}' if self.detail else ''}"


class SkipCounter:
    """Skipped item ids by reason, each id once per reason: an image skipped again in a
    later epoch, or by another process, is one skip. `add` logs a skip the first time
    only; merging never logs."""

    def __init__(self, ids: Mapping[str, Iterable[Hashable]] | None = None) -> None:
        self.ids: dict[str, list[Hashable]] = {}
        self._seen: dict[str, set[Hashable]] = {}
        for reason, items in (ids or {}).items():
            self._extend(reason, items)

    def _extend(self, reason: str, items: Iterable[Hashable]) -> int:
        """Append the ids of `items` not yet counted under `reason`; return how many."""
        kept, seen = self.ids.setdefault(reason, []), self._seen.setdefault(reason, set())
        before = len(kept)
        for item in items:
            if item not in seen:
                seen.add(item)
                kept.append(item)
        return len(kept) - before

    @classmethod
    def of(cls, skips: Iterable[Skip]) -> SkipCounter:
        """A counter of `skips` (already logged where they happened)."""
        counter = cls()
        for skip in skips:
            counter._extend(skip.reason, [skip.item])
        return counter

    def add(self, skip: Skip) -> None:
        if self._extend(skip.reason, [skip.item]):
            logger.warning("skipping %s", skip)

    def update(self, *others: SkipCounter) -> SkipCounter:
        for other in others:
            for reason, ids in other.ids.items():
                self._extend(reason, ids)
        return self

    def counts(self) -> dict[str, int]:
        """Skips per reason, reasons sorted; only reasons that occurred."""
        return {reason: len(ids) for reason, ids in sorted(self.ids.items()) if ids}

    def total(self) -> int:
        return sum(self.counts().values())

    def as_dict(self) -> dict[str, list[Hashable]]:
        """JSON-ready: reasons sorted, each one's ids sorted."""
        return {reason: sorted(ids) for reason, ids in sorted(self.ids.items()) if ids}

    def gathered(self) -> SkipCounter:
        """Every accelerate process's skips merged (collective: all processes must call it);
        this counter itself when there is one process."""
        return SkipCounter().update(*(SkipCounter(ids) for ids in gather_object([self.ids])))

    def summary(self, noun: str = "images") -> str:
        """E.g. "skipped 3 images (1 empty, 2 missing)"."""
        counts = self.counts()
        if not counts:
            return f"skipped 0 {noun}"
        parts = ", ".join(f"{count} {reason}" for reason, count in counts.items())
        return f"skipped {sum(counts.values())} {noun} ({parts})"
