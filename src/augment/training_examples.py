"""Training examples from human captions and scored regions: thresholds, NMS, the mix.

Region candidates go through, in order: box_threshold and text_threshold
(GroundingDINO's two scores), cross-phrase NMS per image (GRIT-style: greedy by
box_score, so one box keeps only its best phrase), clip_threshold, and a cap of
max_region_ratio region examples per full-image example (highest CLIP score first).
Every step is a pure function of the tables and the settings: same inputs, same
examples in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from src.data.boxes import BOX_COLUMNS, paired_box_iou
from src.data.jsonl import Example

BOX_PLACEHOLDER = "{box}"
REGION_KEY = ["image_id", "phrase_index", "query_index"]  # one (box, phrase) candidate
# The columns of regions.parquet that the examples, the gallery and the truth matching use,
# and those that fit in 32 bits (each int64 column takes 47 MB per copy at COCO scale).
CANDIDATE_COLUMNS = ["image_id", "file_name", "width", "height", "phrase", "phrase_index",
                     "query_index", *BOX_COLUMNS, "box_score", "phrase_score", "caption",
                     "clip_score"]
NARROW_COLUMNS = {name: "int32" for name in ("width", "height", "phrase_index", "query_index")}


@dataclass(frozen=True)
class AssembleConfig:
    box_threshold: float
    text_threshold: float
    clip_threshold: float
    nms_iou: float  # 1.0 disables NMS
    full_prompt: str
    region_prompt: str  # with region_format "box" it must hold {box}
    region_format: str  # crop: bbox set, the trainer crops; box: full image, box in the prompt
    max_region_ratio: float
    seed: int


def passes_box_text(regions: pd.DataFrame, box_threshold: float,
                    text_threshold: float) -> pd.DataFrame:
    keep = (regions["box_score"] >= box_threshold) & (regions["phrase_score"] >= text_threshold)
    return regions[keep].reset_index(drop=True)


NMS_CELLS = 1 << 22  # IoU matrix cells per vectorised chunk of images (32 MiB of float64)


def _greedy_keep(boxes: np.ndarray, valid: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on (images, slots, 4) boxes, each image's best first; `valid` marks the
    real slots of the padded rows. Returns which slots survive, all images at once."""
    over = paired_box_iou(boxes[:, :, None, :], boxes[:, None, :, :]) > iou_threshold
    alive = valid.copy()
    for i in range(boxes.shape[1] - 1):
        alive[:, i + 1:] &= ~(over[:, i, i + 1:] & alive[:, i, None])
    return alive


def cross_phrase_nms(regions: pd.DataFrame, iou_threshold: float) -> pd.DataFrame:
    """Per image, greedy by box_score (ties: phrase_score, then the candidate key): a
    candidate overlapping a kept one by IoU > iou_threshold is dropped, whatever its phrase.
    Returns the survivors in (image, phrase, box) order.

    Images of similar candidate counts are padded into one array and suppressed together:
    one vectorised step per candidate rank instead of a Python loop per image.
    """
    column = {name: regions[name].to_numpy() for name in REGION_KEY}
    order = np.lexsort((column["query_index"], column["phrase_index"],
                        -regions["phrase_score"].to_numpy(), -regions["box_score"].to_numpy(),
                        column["image_id"]))  # positions, best candidate of each image first
    image_ids = column["image_id"][order]
    boxes = regions[BOX_COLUMNS].to_numpy(dtype=np.float64)[order]
    starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]]) if len(order) else \
        np.zeros(0, dtype=np.int64)
    sizes = np.diff(np.r_[starts, len(order)])
    keep = np.zeros(len(order), dtype=bool)
    by_size = np.argsort(sizes, kind="stable")
    first = 0
    while first < len(by_size):
        last = first + 1  # grow the chunk while the padded matrices fit the budget
        while last < len(by_size) and (last + 1 - first) * sizes[by_size[last]] ** 2 <= NMS_CELLS:
            last += 1
        groups = by_size[first:last]
        size = sizes[groups].max()
        slots = np.arange(size)
        valid = slots[None, :] < sizes[groups][:, None]
        rows = (starts[groups][:, None] + slots[None, :])[valid]
        padded = np.zeros((len(groups), size, 4))
        padded[valid] = boxes[rows]
        keep[rows] = _greedy_keep(padded, valid, iou_threshold)[valid]
        first = last
    survivors = np.sort(order[keep])  # input order, then the key: as a stable sort
    survivors = survivors[np.lexsort((column["query_index"][survivors],
                                      column["phrase_index"][survivors],
                                      column["image_id"][survivors]))]
    return regions.iloc[survivors].reset_index(drop=True)


def cap_regions(regions: pd.DataFrame, max_count: int, seed: int) -> pd.DataFrame:
    """At most `max_count` rows: the highest clip_score first, exact ties broken by `seed`."""
    def by_key(positions: np.ndarray) -> np.ndarray:  # a stable sort by REGION_KEY
        keys = [regions[name].to_numpy()[positions] for name in reversed(REGION_KEY)]
        return positions[np.lexsort(keys)]

    canonical = by_key(np.arange(len(regions)))  # positions, sorted without copying rows
    tiebreak = np.random.default_rng(seed).permutation(len(canonical))
    scores = regions["clip_score"].to_numpy()[canonical]
    ranked = canonical[np.lexsort((tiebreak, -scores))]
    return regions.iloc[by_key(ranked[:max(0, max_count)])].reset_index(drop=True)


def box_text(box_xyxy: tuple[float, float, float, float], width: int, height: int) -> str:
    """LLaVA-1.5's region notation: "[0.12, 0.30, 0.55, 0.91]", relative to the image."""
    x0, y0, x1, y1 = box_xyxy
    return f"[{x0 / width:.2f}, {y0 / height:.2f}, {x1 / width:.2f}, {y1 / height:.2f}]"


def normalised_caption(caption: object) -> str:
    """A human caption with its whitespace runs collapsed ("" for an empty one)."""
    return " ".join(str(caption).split())


def full_examples(captions: pd.DataFrame, image_dir_name: str, prompt: str) -> list[Example]:
    """One example per human caption (whitespace normalised; empty captions dropped)."""
    examples = []
    for row in captions.itertuples(index=False):
        caption = normalised_caption(row.caption)
        if caption:
            examples.append(Example(
                id=f"{row.image_id}-full-{row.caption_id}",
                image=f"{image_dir_name}/{row.file_name}", kind="full", bbox=None,
                prompt=prompt, caption=caption, meta={"caption_id": int(row.caption_id)}))
    return examples


def region_examples(regions: pd.DataFrame, image_dir_name: str,
                    config: AssembleConfig) -> list[Example]:
    examples = []
    for row in regions.itertuples(index=False):
        box = (float(row.box_x0), float(row.box_y0), float(row.box_x1), float(row.box_y1))
        as_crop = config.region_format == "crop"
        prompt = config.region_prompt if as_crop else config.region_prompt.replace(
            BOX_PLACEHOLDER, box_text(box, int(row.width), int(row.height)))
        examples.append(Example(
            id=f"{row.image_id}-region-{row.phrase_index}-{row.query_index}",
            image=f"{image_dir_name}/{row.file_name}", kind="region",
            bbox=box if as_crop else None, prompt=prompt, caption=str(row.caption),
            meta={"phrase": str(row.phrase), "clip_score": round(float(row.clip_score), 4),
                  "box_score": round(float(row.box_score), 4),
                  "phrase_score": round(float(row.phrase_score), 4)}))
    return examples


def example_order(example: Example) -> tuple[int, str, str]:
    return int(example.id.split("-", 1)[0]), example.kind, example.id


def threshold_sweep(regions: pd.DataFrame) -> pd.DataFrame:
    """Regions kept at each clip_threshold, by 0.01 across the scores' range (0.00 to
    0.50 when there are none), so the curve shows whatever CLIP variant scored them."""
    scores = regions["clip_score"].to_numpy(float)
    low, high = (math.floor(round(100 * scores.min(), 6)),
                 math.ceil(round(100 * scores.max(), 6))) if len(scores) else (0, 50)
    thresholds = [round(0.01 * i, 2) for i in range(low, high + 1)]
    return pd.DataFrame({"clip_threshold": thresholds,
                         "regions_kept": [int((scores >= t).sum()) for t in thresholds]})


EXAMPLE_CHUNK = 4096  # images whose examples are built and sorted at a time


@dataclass(frozen=True)
class Assembly:
    full: pd.DataFrame  # the captions that become full-image examples
    after_box_text: pd.DataFrame
    after_nms: pd.DataFrame
    chosen: pd.DataFrame  # the regions that become region examples
    image_ids: frozenset[int]  # the readable captioned images the examples come from
    metrics: dict[str, Any]
    image_dir_name: str
    config: AssembleConfig

    def examples(self) -> Iterator[Example]:
        """All examples, sorted by (image id, kind, id), built EXAMPLE_CHUNK images at a
        time: COCO train's 1.2M examples held at once took 1.8 GB. A chunk holds whole
        images and the key starts with the image id, so the chunks' sorted runs, one
        after another, are the whole sort."""
        full_ids = self.full["image_id"].to_numpy()
        region_ids = self.chosen["image_id"].to_numpy()
        images = np.union1d(full_ids, region_ids)
        for first in range(0, len(images), EXAMPLE_CHUNK):
            low, high = images[first], images[min(first + EXAMPLE_CHUNK, len(images)) - 1]
            full = self.full[(full_ids >= low) & (full_ids <= high)]
            regions = self.chosen[(region_ids >= low) & (region_ids <= high)]
            yield from sorted(
                full_examples(full, self.image_dir_name, self.config.full_prompt)
                + region_examples(regions, self.image_dir_name, self.config),
                key=example_order)


def unread_images(captions: pd.DataFrame, regions: pd.DataFrame,
                  counts: dict[str, Any]) -> list[int]:
    """The captioned images neither detect nor clip_score is known to have read: those
    without a phrase (detect never sees them) and those without a candidate."""
    seen = set(regions["image_id"].unique().tolist())
    for part in (counts["detect"]["skipped"], counts["clip_score"]["skipped"]):
        seen.update(i for ids in part.values() for i in ids)
    return sorted(set(captions["image_id"].tolist()) - seen)


def assemble(captions: pd.DataFrame, regions: pd.DataFrame, counts: dict[str, Any],
             config: AssembleConfig, image_dir_name: str,
             unread_skipped: Mapping[str, Iterable[int]] | None = None) -> Assembly:
    """The regions and captions that become examples (`Assembly.examples` builds them),
    and flat metrics.

    `counts` is the metadata carried by regions.parquet: detect's and clip_score's
    counts, with the ids of the images they could not read (no example uses them).
    `unread_skipped` holds the same for the `unread_images`, read by the caller.
    """
    detect, clip = counts["detect"], counts["clip_score"]
    skipped: dict[str, set[int]] = {}
    for part in (detect["skipped"], clip["skipped"], unread_skipped or {}):
        for reason, ids in part.items():
            skipped.setdefault(reason, set()).update(ids)
    unreadable = set().union(*skipped.values())
    usable = captions[~captions["image_id"].isin(unreadable)]
    full = usable[np.array([bool(normalised_caption(c)) for c in usable["caption"]], dtype=bool)]

    after_box_text = passes_box_text(regions, config.box_threshold, config.text_threshold)
    after_nms = cross_phrase_nms(after_box_text, config.nms_iou)
    kept = after_nms[after_nms["clip_score"] >= config.clip_threshold]
    chosen = cap_regions(kept, int(config.max_region_ratio * len(full)), config.seed)
    regions_kept = len(kept)
    del kept  # millions of rows at COCO scale, not needed past this point

    images = captions["image_id"].nunique()
    metrics = {
        "images": images,
        "images_skipped": len(unreadable),
        **{f"images_skipped_{reason}": len(ids) for reason, ids in sorted(skipped.items())},
        "images_no_phrases": images - detect["images"],
        "images_no_detections": detect["images_no_detections"],
        "phrases": detect["phrases"],
        "phrases_too_long": detect["phrases_too_long"],
        "candidates": detect["candidates"],
        "candidates_small": clip["small_boxes"],
        "after_box_text": len(after_box_text),
        "after_nms": len(after_nms),
        "regions_kept": regions_kept,
        "keep_rate": round(regions_kept / detect["candidates"], 4) if detect["candidates"] else 0.0,
        "captions_empty": len(usable) - len(full),
        "full_examples": len(full),
        "region_examples": len(chosen),
    }
    image_ids = frozenset(int(i) for i in usable["image_id"].unique())
    return Assembly(full, after_box_text, after_nms, chosen, image_ids, metrics, image_dir_name,
                    config)
