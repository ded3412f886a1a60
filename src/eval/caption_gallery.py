"""A qualitative picture of an evaluation: each image beside its prediction and references."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

THUMB_SIDE = 192  # pixels of each image's longer side
TEXT_WIDTH = 520  # pixels of the caption column
WRAP_CHARS = 64  # characters per caption line at FONT_SIZE
FONT_SIZE = 14
LINE_HEIGHT = 18
PAD = 8


@dataclass(frozen=True)
class GalleryRow:
    image: Image.Image
    title: str  # e.g. the image id and its CIDEr
    prediction: str
    references: Sequence[str]


def _lines(row: GalleryRow) -> list[tuple[str, tuple[int, int, int]]]:
    lines = [(row.title, (90, 90, 90))]
    for label, text, color in [("pred", row.prediction, (10, 90, 10))] + [
        ("ref", ref, (40, 40, 40)) for ref in row.references
    ]:
        wrapped = textwrap.wrap(f"{label}: {text or '(empty)'}", WRAP_CHARS) or [f"{label}:"]
        lines += [(line, color) for line in wrapped]
    return lines


def render_gallery(rows: Sequence[GalleryRow]) -> Image.Image:
    """One row per image: a thumbnail on the left, title, prediction and references on the right."""
    font = ImageFont.load_default(size=FONT_SIZE)
    laid_out = [(row, _lines(row)) for row in rows]
    heights = [max(THUMB_SIDE, len(lines) * LINE_HEIGHT) + 2 * PAD for _, lines in laid_out]
    width = THUMB_SIDE + TEXT_WIDTH + 3 * PAD
    canvas = Image.new("RGB", (width, max(1, sum(heights))), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    top = 0
    for (row, lines), height in zip(laid_out, heights, strict=True):
        thumb = row.image.copy()
        thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
        canvas.paste(thumb, (PAD, top + PAD))
        for index, (line, color) in enumerate(lines):
            draw.text((THUMB_SIDE + 2 * PAD, top + PAD + index * LINE_HEIGHT), line,
                      fill=color, font=font)
        top += height
        draw.line([(0, top - 1), (width, top - 1)], fill=(220, 220, 220))
    return canvas


def render_notice(text: str) -> Image.Image:
    """A small picture that says why there is no gallery (e.g. the baseline is disabled)."""
    font = ImageFont.load_default(size=FONT_SIZE)
    canvas = Image.new("RGB", (THUMB_SIDE + TEXT_WIDTH + 3 * PAD, 2 * PAD + LINE_HEIGHT),
                       (255, 255, 255))
    ImageDraw.Draw(canvas).text((PAD, PAD), text, fill=(40, 40, 40), font=font)
    return canvas
