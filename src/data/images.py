"""The one image-reading path: paths resolved under a root, any PIL mode decoded to upright RGB,
and every unusable file or path a `Skip` record with its reason, never an exception.

Every stage that reads images (detect, clip_score, both galleries, train, evaluate) reads
them through `ImageDataset` or `read_image`, so they agree on what is skipped and why.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from src.data.coco import resolve_image_path
from src.data.skips import Skip

SKIP_REASONS = ("path_escape", "missing", "empty", "not_an_image", "truncated",
                "decompression_bomb", "unreadable")


class ImageSkip(Exception):
    """An image that cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, path: Path, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}{f' ({detail})' if detail else ''}")
        self.path = path
        self.reason = reason
        self.detail = detail


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit/float greyscale: scale the real range to 8 bits instead of clipping to white.
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray((array / top * 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: Path) -> Image.Image:
    """Decode `path` fully into an upright RGB image, or raise ImageSkip with the reason."""
    path = Path(path)
    if not path.is_file():
        raise ImageSkip(path, "missing")
    if path.stat().st_size == 0:
        raise ImageSkip(path, "empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                upright = ImageOps.exif_transpose(image)
                return _to_rgb(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageSkip(path, "decompression_bomb", str(error)) from error
    except UnidentifiedImageError as error:
        raise ImageSkip(path, "not_an_image", str(error)) from error
    except OSError as error:
        reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
        raise ImageSkip(path, reason, str(error)) from error
    except (ValueError, SyntaxError) as error:
        raise ImageSkip(path, "unreadable", str(error)) from error


def read_image(image_root: Path, item: Hashable, relative: str) -> Image.Image | Skip:
    """`relative` (a path under `image_root`) decoded to RGB, or the Skip saying why not.

    A path that leaves the root (`../../etc/passwd`, an absolute path) is a "path_escape"
    skip and is never opened.
    """
    try:
        path = resolve_image_path(image_root, relative)
    except ValueError as error:
        return Skip(item, "path_escape", relative, str(error))
    try:
        return load_rgb(path)
    except ImageSkip as skip:
        return Skip(item, skip.reason, relative, skip.detail)


class ImageDataset(Dataset):
    """(item id, RGB image or Skip) for each (item id, path relative to `image_root`).

    Decoding runs in DataLoader workers; a Skip pickles back to the main process, where
    a SkipCounter counts it.
    """

    def __init__(self, items: Sequence[tuple[Hashable, str]], image_root: Path) -> None:
        self.items = list(items)
        self.image_root = Path(image_root)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[Hashable, Image.Image | Skip]:
        item, relative = self.items[index]
        return item, read_image(self.image_root, item, relative)


def crop_box(image: Image.Image, box_xyxy: tuple[float, float, float, float],
             pad_frac: float = 0.0) -> Image.Image:
    """Crop a pixel xyxy box grown by `pad_frac` of its size on each side, clamped to the image."""
    x0, y0, x1, y1 = box_xyxy
    pad_x, pad_y = (x1 - x0) * pad_frac, (y1 - y0) * pad_frac
    left = max(0, int(x0 - pad_x))
    top = max(0, int(y0 - pad_y))
    # int(): round() of a numpy float is a numpy float
    right = min(image.width, int(round(x1 + pad_x)))  # noqa: RUF046
    bottom = min(image.height, int(round(y1 + pad_y)))  # noqa: RUF046
    if right <= left or bottom <= top:
        raise ValueError(f"box {box_xyxy} has no area inside a {image.width}x{image.height} image")
    return image.crop((left, top, right, bottom))
