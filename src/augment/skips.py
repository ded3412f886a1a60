"""Unreadable images as they travel: out of DataLoader workers, and by reason between stages."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.data.images import ImageSkip


@dataclass(frozen=True)
class Skipped:
    """An ImageSkip as it crosses from a DataLoader worker (the exception does not pickle)."""

    item: int  # the dataset item that could not be read
    path: str
    reason: str
    detail: str

    @classmethod
    def from_skip(cls, item: int, skip: ImageSkip) -> Skipped:
        return cls(item, str(skip.path), skip.reason, str(skip.__cause__ or ""))

    def as_image_skip(self) -> ImageSkip:
        return ImageSkip(Path(self.path), self.reason, self.detail)


def merge_skips(*skips: dict[str, list[int]]) -> dict[str, list[int]]:
    """Skipped image ids by reason, from several parts, each list sorted."""
    merged: dict[str, list[int]] = {}
    for part in skips:
        for reason, image_ids in part.items():
            merged.setdefault(reason, []).extend(image_ids)
    return {reason: sorted(ids) for reason, ids in sorted(merged.items())}
