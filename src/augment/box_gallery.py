"""A picture of what the thresholds do: images with their candidate boxes, kept vs dropped.

Kept boxes (those that became region examples) are green and thick; dropped
ones (NMS, CLIP threshold or the cap) red, thin and dashed. Each box is labelled
with its phrase and CLIP score. Ground-truth boxes, where known, are thin and cyan,
beneath the others; a legend heads the sheet.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

KEPT = (40, 200, 60)
DROPPED = (230, 40, 40)
TRUTH = (0, 210, 255)
LEGEND = (("kept region", KEPT), ("dropped region", DROPPED), ("ground truth", TRUTH))
LEGEND_HEIGHT = 18
CELL = 320  # pixels of a grid cell's longer side
COLUMNS = 4
DASH = 6


@dataclass(frozen=True)
class GalleryBox:
    box_xyxy: tuple[float, float, float, float]
    label: str
    kept: bool


def choose_gallery(candidates: pd.DataFrame, chosen: pd.DataFrame, num_images: int,
                   seed: int) -> dict[int, list[GalleryBox]]:
    """Boxes of up to `num_images` images (a seeded sample, by image id) of `candidates`,
    marked kept when the same candidate is in `chosen`."""
    key = ["image_id", "phrase_index", "query_index"]
    image_ids = np.unique(candidates["image_id"].to_numpy()).tolist()
    sample = sorted(random.Random(seed).sample(image_ids, min(num_images, len(image_ids))))
    kept = set(map(tuple, chosen.loc[chosen["image_id"].isin(sample), key].to_numpy().tolist()))
    gallery: dict[int, list[GalleryBox]] = {}
    for row in candidates[candidates["image_id"].isin(sample)].itertuples(index=False):
        box = (float(row.box_x0), float(row.box_y0), float(row.box_x1), float(row.box_y1))
        is_kept = (row.image_id, row.phrase_index, row.query_index) in kept
        gallery.setdefault(int(row.image_id), []).append(
            GalleryBox(box, f"{row.phrase} {row.clip_score:.2f}", is_kept))
    return gallery


def _dashed_rectangle(draw: ImageDraw.ImageDraw, box: tuple[float, ...], color: tuple) -> None:
    x0, y0, x1, y1 = box
    for a, b, fixed, horizontal in ((x0, x1, y0, True), (x0, x1, y1, True),
                                    (y0, y1, x0, False), (y0, y1, x1, False)):
        start = a
        while start < b:
            end = min(start + DASH, b)
            line = [(start, fixed), (end, fixed)] if horizontal else [(fixed, start), (fixed, end)]
            draw.line(line, fill=color, width=1)
            start += 2 * DASH


def truth_boxes(truth: pd.DataFrame | None,
                image_id: int) -> list[tuple[float, float, float, float]]:
    """The ground-truth xyxy boxes of one image (none when there is no ground truth)."""
    if truth is None:
        return []
    rows = truth[truth["image_id"] == image_id]
    return [tuple(map(float, box)) for box in
            rows[["box_x0", "box_y0", "box_x1", "box_y1"]].to_numpy()]


def draw_boxes(image: Image.Image, boxes: list[GalleryBox],
               truth: list[tuple[float, float, float, float]] = ()) -> Image.Image:
    """`image` scaled to fit a CELL square, with the `truth` boxes beneath `boxes` (kept
    ones on top)."""
    scale = CELL / max(image.size)
    canvas = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for box in truth:
        draw.rectangle(tuple(v * scale for v in box), outline=TRUTH, width=1)
    for item in sorted(boxes, key=lambda b: b.kept):
        box = tuple(v * scale for v in item.box_xyxy)
        color = KEPT if item.kept else DROPPED
        if item.kept:
            draw.rectangle(box, outline=color, width=3)
        else:
            _dashed_rectangle(draw, box, color)
        left, top, right, bottom = draw.textbbox((box[0] + 2, box[1] + 2), item.label, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=color)
        draw.text((box[0] + 2, box[1] + 2), item.label, fill=(255, 255, 255), font=font)
    return canvas


def grid(tiles: list[Image.Image]) -> Image.Image:
    """Tiles in rows of COLUMNS cells; an explanatory tile when there is nothing to show."""
    if not tiles:
        blank = Image.new("RGB", (CELL, CELL // 4), (255, 255, 255))
        ImageDraw.Draw(blank).text((8, 8), "no candidate passed box/text thresholds",
                                   fill=(0, 0, 0), font=ImageFont.load_default())
        return blank
    rows = (len(tiles) + COLUMNS - 1) // COLUMNS
    sheet = Image.new("RGB", (min(len(tiles), COLUMNS) * CELL, LEGEND_HEIGHT + rows * CELL),
                      (255, 255, 255))
    draw, font, x = ImageDraw.Draw(sheet), ImageFont.load_default(), 6
    for label, color in LEGEND:
        draw.rectangle((x, 5, x + 16, 13), outline=color, width=2)
        draw.text((x + 22, 3), label, fill=(0, 0, 0), font=font)
        x += 34 + round(draw.textlength(label, font=font))
    for index, tile in enumerate(tiles):
        sheet.paste(tile, ((index % COLUMNS) * CELL, LEGEND_HEIGHT + (index // COLUMNS) * CELL))
    return sheet
