"""Region examples measured against ground-truth boxes: are boxes on what their phrase names?

A region is *correct* when its box has IoU >= 0.5 with a ground-truth box of a category
its phrase names. A phrase names a category when it ends with one of the category's names
(English noun phrases end in their head: "a small red circle" names "red circle", "two
brown dogs" names "dog"), a plural "s"/"es" allowed on the last word. COCO's category
names are widened by `COCO_SYNONYMS` ("man" names "person").

Where no image holds two boxes of one category (the demo world: one category per colour
and kind), a correct region is on exactly the right object, and the metrics are exact:
`region_precision`, `gt_recall`. Otherwise (real COCO: three "person" boxes in one photo)
a box on the wrong person still counts, so the same numbers are named `category_*`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from src.data.boxes import BOX_COLUMNS, box_iou
from src.data.coco import CocoInstance

IOU_MATCH = 0.5

# Words captions use for COCO's 80 categories, beyond the category's own name.
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("man", "men", "woman", "women", "people", "boy", "girl", "child", "children",
               "kid", "guy", "lady", "ladies", "player", "skier", "surfer", "skateboarder",
               "snowboarder", "rider", "baby", "adult"),
    "bicycle": ("bike",),
    "motorcycle": ("motorbike", "motor bike"),
    "airplane": ("plane", "jet", "airliner", "aircraft"),
    "boat": ("ship", "sailboat", "canoe", "kayak"),
    "traffic light": ("stoplight", "traffic signal"),
    "couch": ("sofa",),
    "tv": ("television",),
    "dining table": ("table",),
    "cell phone": ("phone", "cellphone", "smartphone"),
    "sports ball": ("ball", "soccer ball", "tennis ball", "baseball"),
    "potted plant": ("plant", "houseplant"),
    "laptop": ("computer",),
    "donut": ("doughnut",),
    "hair drier": ("hair dryer", "hairdryer", "blow dryer"),
    "teddy bear": ("teddy",),
    "refrigerator": ("fridge",),
    "cup": ("mug",),
    "hot dog": ("hotdog",),
    "skis": ("ski",),
    "tennis racket": ("racket", "racquet"),
    "baseball bat": ("bat",),
    "baseball glove": ("glove", "mitt"),
    "handbag": ("purse", "bag"),
    "suitcase": ("luggage",),
    "remote": ("controller", "remote control"),
    "wine glass": ("glass",),
    "mouse": ("computer mouse",),
}


def truth_table(instances: Iterable[CocoInstance]) -> pd.DataFrame:
    """Ground-truth boxes as a table: image_id, category and the pixel xyxy box columns."""
    rows = [(i.image_id, i.category, *i.box_xyxy) for i in instances]
    return pd.DataFrame(rows, columns=["image_id", "category", *BOX_COLUMNS])


def _names_category(phrase_words: list[str], name: str) -> bool:
    words = name.split()
    if len(phrase_words) < len(words):
        return False
    tail = phrase_words[-len(words):]
    last = tail[-1]
    return tail[:-1] == words[:-1] and last in (words[-1], words[-1] + "s", words[-1] + "es")


def named_categories(phrase: str, categories: Iterable[str]) -> frozenset[str]:
    """The categories `phrase` names, by its last words."""
    words = phrase.lower().split()
    return frozenset(c for c in categories
                     if any(_names_category(words, n) for n in (c, *COCO_SYNONYMS.get(c, ()))))


@dataclass(frozen=True)
class TruthMatch:
    correct: np.ndarray  # per region: on a ground-truth box of a category its phrase names
    cover_score: np.ndarray  # per truth box: the best clip_score among correct regions on it


def match_truth(regions: pd.DataFrame, truth: pd.DataFrame) -> TruthMatch:
    """Match every region (image_id, phrase, box columns, clip_score) to `truth`."""
    correct = np.zeros(len(regions), dtype=bool)
    cover_score = np.full(len(truth), -np.inf)
    categories = sorted(set(truth["category"]))
    named = {p: named_categories(p, categories) for p in set(regions["phrase"])}
    truth_rows = truth.reset_index(drop=True).groupby("image_id").indices
    for image_id, region_rows in regions.reset_index(drop=True).groupby("image_id").indices.items():
        if image_id not in truth_rows:
            continue
        gt = truth.iloc[truth_rows[image_id]]
        found = regions.iloc[region_rows]
        same_object = box_iou(found[BOX_COLUMNS].to_numpy(float),
                                  gt[BOX_COLUMNS].to_numpy(float)) >= IOU_MATCH
        names_it = np.array([[c in named[p] for c in gt["category"]] for p in found["phrase"]],
                            dtype=bool).reshape(same_object.shape)
        covers = same_object & names_it
        correct[region_rows] = covers.any(axis=1)
        scores = np.where(covers, found["clip_score"].to_numpy(float)[:, None], -np.inf)
        cover_score[truth_rows[image_id]] = scores.max(axis=0, initial=-np.inf)
    return TruthMatch(correct, cover_score)


def is_exact(truth: pd.DataFrame) -> bool:
    """True when no image holds two boxes of one category (then a match is the object)."""
    return not truth.duplicated(["image_id", "category"]).any()


def _share(flags: np.ndarray) -> float | None:
    return round(float(flags.mean()), 4) if len(flags) else None


def truth_metrics(before_clip: pd.DataFrame, examples: pd.DataFrame,
                  truth: pd.DataFrame) -> dict[str, float | int | None]:
    """Precision of the regions the CLIP filter saw and of the region examples it let
    through, and the share of truth boxes the examples cover (None where nothing to count)."""
    prefix = "" if is_exact(truth) else "category_"
    chosen = match_truth(examples, truth)
    return {
        f"{prefix}region_precision_before_clip":
            _share(match_truth(before_clip, truth).correct),
        f"{prefix}region_precision": _share(chosen.correct),
        f"{prefix}gt_recall": _share(np.isfinite(chosen.cover_score)),
        "gt_boxes": len(truth),
    }


def truth_sweep(regions: pd.DataFrame, truth: pd.DataFrame,
                thresholds: Iterable[float]) -> pd.DataFrame:
    """Precision and recall of the regions at or above each clip_threshold (the columns
    keep their names at category level too, so one plot definition draws both)."""
    match = match_truth(regions, truth)
    scores = regions["clip_score"].to_numpy(float)
    rows = [(_share(match.correct[scores >= t]), _share(match.cover_score >= t))
            for t in thresholds]
    return pd.DataFrame(rows, columns=["region_precision", "gt_recall"])
