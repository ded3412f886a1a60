"""A qualitative picture of an evaluation: each image beside its prediction and references,
with the prediction's marked spans (CHAIR's hallucinated objects) in red."""

from __future__ import annotations

import itertools
import re
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
TITLE, PREDICTION, REFERENCE = (90, 90, 90), (10, 90, 10), (40, 40, 40)
MARKED = (210, 20, 20)
PREDICTION_LABEL = "pred: "

Segment = tuple[str, tuple[int, int, int]]  # text and its colour


@dataclass(frozen=True)
class GalleryRow:
    image: Image.Image
    title: str  # e.g. the image id and its CIDEr
    prediction: str
    references: Sequence[str]
    marked: Sequence[tuple[int, int]] = ()  # [start, end) character spans of `prediction`


def _coloured(text: str, start: int, marked: Sequence[tuple[int, int]]) -> list[Segment]:
    """`text` (found at `start` of the prediction) cut where marked spans begin and end."""
    cuts = sorted({0, len(text), *(min(max(edge - start, 0), len(text))
                                   for span in marked for edge in span)})
    segments = []
    for begin, end in itertools.pairwise(cuts):
        inside = any(a <= start + begin and start + end <= b for a, b in marked)
        segments.append((text[begin:end], MARKED if inside else PREDICTION))
    return segments


def _prediction_lines(prediction: str, marked: Sequence[tuple[int, int]]) -> list[list[Segment]]:
    """The prediction wrapped at word boundaries like the other lines, keeping each word's
    offset so marked spans land on the right characters."""
    if not prediction.strip():
        return [[(f"{PREDICTION_LABEL}(empty)", PREDICTION)]]
    lines: list[list[Segment]] = [[(PREDICTION_LABEL.rstrip(), PREDICTION)]]
    width = len(PREDICTION_LABEL.rstrip())
    for word in re.finditer(r"\S+", prediction):
        pieces = _coloured(word.group(), word.start(), marked)
        if width + 1 + len(word.group()) > WRAP_CHARS:
            lines.append(pieces)
            width = len(word.group())
        else:
            lines[-1] += [(" ", PREDICTION), *pieces]
            width += 1 + len(word.group())
    return lines


def _lines(row: GalleryRow) -> list[list[Segment]]:
    lines = [[(row.title, TITLE)]]
    lines += _prediction_lines(row.prediction, row.marked)
    for ref in row.references:
        lines += [[(line, REFERENCE)] for line in textwrap.wrap(f"ref: {ref or '(empty)'}",
                                                                 WRAP_CHARS) or ["ref:"]]
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
        for index, segments in enumerate(lines):
            left = THUMB_SIDE + 2 * PAD
            for text, color in segments:
                draw.text((left, top + PAD + index * LINE_HEIGHT), text, fill=color, font=font)
                left += draw.textlength(text, font=font)
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
