"""The evaluated val images, decoded in DataLoader workers; bad files become counted skips."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from src.data.images import ImageSkip, load_rgb


@dataclass(frozen=True)
class EvalImage:
    image_id: int
    path: Path


class ImageDataset(Dataset):
    """(image_id, RGB image) per item, or (image_id, ImageSkip) for an unusable file."""

    def __init__(self, items: Sequence[EvalImage]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, Image.Image | ImageSkip]:
        item = self.items[index]
        try:
            return item.image_id, load_rgb(item.path)
        except ImageSkip as skip:
            return item.image_id, skip
