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
from functools import lru_cache

import numpy as np
import pandas as pd

from src.data.boxes import BOX_COLUMNS, paired_box_iou
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


@lru_cache(maxsize=8)
def _names_by_last_word(categories: tuple[str, ...]) -> dict[str, list[tuple[str, str]]]:
    """(category, name) pairs under each last word a phrase naming them can end with."""
    index: dict[str, list[tuple[str, str]]] = {}
    for category in categories:
        for name in (category, *COCO_SYNONYMS.get(category, ())):
            last = name.split()[-1]
            for ending in dict.fromkeys((last, last + "s", last + "es")):
                index.setdefault(ending, []).append((category, name))
    return index


def named_categories(phrase: str, categories: Iterable[str]) -> frozenset[str]:
    """The categories `phrase` names, by its last words."""
    words = phrase.lower().split()
    if not words:
        return frozenset()
    candidates = _names_by_last_word(tuple(sorted(set(categories)))).get(words[-1], ())
    return frozenset(c for c, name in candidates if _names_category(words, name))


@dataclass(frozen=True)
class TruthMatch:
    correct: np.ndarray  # per region: on a ground-truth box of a category its phrase names
    cover_score: np.ndarray  # per truth box: the best clip_score among correct regions on it


def match_truth(regions: pd.DataFrame, truth: pd.DataFrame) -> TruthMatch:
    """Match every region (image_id, phrase, box columns, clip_score) to `truth`.

    Vectorised: each region is paired only with the truth boxes of its image whose
    category its phrase names (a join on image and category), and IoU is computed on
    those pairs alone.
    """
    correct = np.zeros(len(regions), dtype=bool)
    cover_score = np.full(len(truth), -np.inf)
    truth_codes, categories = pd.factorize(truth["category"])  # joined on codes, not strings
    phrase_codes, phrases = pd.factorize(regions["phrase"])
    code_of = {category: code for code, category in enumerate(categories)}
    named = [(code, code_of[category]) for code, phrase in enumerate(phrases)
             for category in sorted(named_categories(phrase, categories))]
    if not named:
        return TruthMatch(correct, cover_score)
    codes, named_category = zip(*named, strict=True)
    pairs = (pd.DataFrame({"region_row": np.arange(len(regions)), "phrase_code": phrase_codes,
                           "image_id": regions["image_id"].to_numpy(np.int64)})
             .merge(pd.DataFrame({"phrase_code": np.array(codes, dtype=phrase_codes.dtype),
                                  "category": np.array(named_category, dtype=truth_codes.dtype)}),
                    on="phrase_code")
             .merge(pd.DataFrame({"truth_row": np.arange(len(truth)),
                                  "image_id": truth["image_id"].to_numpy(np.int64),
                                  "category": truth_codes}),
                    on=["image_id", "category"]))
    region_row, truth_row = pairs["region_row"].to_numpy(), pairs["truth_row"].to_numpy()
    del pairs
    iou = paired_box_iou(regions[BOX_COLUMNS].to_numpy()[region_row].astype(float),
                         truth[BOX_COLUMNS].to_numpy(float)[truth_row])
    hit = iou >= IOU_MATCH
    correct[region_row[hit]] = True
    np.maximum.at(cover_score, truth_row[hit],
                  regions["clip_score"].to_numpy(float)[region_row[hit]])
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
