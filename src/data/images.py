"""Robust image loading: any PIL mode to RGB, EXIF orientation applied, bad files become counted skips."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

SKIP_REASONS = ("missing", "empty", "not_an_image", "truncated", "decompression_bomb", "unreadable")


class ImageSkip(Exception):
    """An image that cannot be used; `reason` is one of SKIP_REASONS."""

    def __init__(self, path: Path, reason: str, detail: str = "") -> None:
        super().__init__(f"{path}: {reason}{f' ({detail})' if detail else ''}")
        self.path = path
        self.reason = reason


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
        raise ImageSkip(path, "not_an_image") from error
    except OSError as error:
        reason = "truncated" if "truncated" in str(error).lower() else "unreadable"
        raise ImageSkip(path, reason, str(error)) from error
    except (ValueError, SyntaxError) as error:
        raise ImageSkip(path, "unreadable", str(error)) from error


class SkipCounter(Counter):
    """Skipped images by reason; logs each skip once as a warning."""

    def add(self, skip: ImageSkip) -> None:
        logger.warning("skipping image %s", skip)
        self[skip.reason] += 1

    def summary(self) -> str:
        total = sum(self.values())
        if not total:
            return "skipped 0 images"
        parts = ", ".join(f"{count} {reason}" for reason, count in sorted(self.items()))
        return f"skipped {total} images ({parts})"


def crop_box(image: Image.Image, box_xyxy: tuple[float, float, float, float],
             pad_frac: float = 0.0) -> Image.Image:
    """Crop a pixel xyxy box grown by `pad_frac` of its size on each side, clamped to the image."""
    x0, y0, x1, y1 = box_xyxy
    pad_x, pad_y = (x1 - x0) * pad_frac, (y1 - y0) * pad_frac
    left = max(0, int(x0 - pad_x))
    top = max(0, int(y0 - pad_y))
    right = min(image.width, int(round(x1 + pad_x)))
    bottom = min(image.height, int(round(y1 + pad_y)))
    if right <= left or bottom <= top:
        raise ValueError(f"box {box_xyxy} has no area inside a {image.width}x{image.height} image")
    return image.crop((left, top, right, bottom))
