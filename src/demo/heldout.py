"""Held-out checks of the demo's trained models, through the pipeline's own loaders.

On a demo split the training never drew (the demo stage's val split), with its ground truth
(`instances_{split}2017.json`: every shape's box, "colour kind" category and size):
- detector: each image is queried with its shapes' phrases as the detect stage queries it
  (`plan_queries`, `detection_loader`, `iter_detections`); a shape is found when the box
  its phrase scores highest has IoU >= 0.5 with it;
- CLIP: each shape is cropped as the clip_score stage crops it (`crop_box` with the stage's
  context padding) and must score its own phrase above 9 distractors naming another colour
  or another kind. Size words are not tested: a padded crop does not show absolute size;
- CLIPScore: each whole image must score one of its own captions above a caption of another
  image (one that does not share that caption), both scored as the eval stage scores them.
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import CLIPModel, GroundingDinoForObjectDetection, ProcessorMixin

from src.augment.grounding import (
    detection_loader,
    detections_frame,
    image_batches,
    iter_detections,
    plan_queries,
)
from src.data.boxes import box_iou
from src.data.coco import CocoInstance, load_captions, load_instances, resolve_image_path
from src.data.images import crop_box, load_rgb
from src.demo.train_clip import object_name
from src.demo.training import PHRASES
from src.eval.clipscore import clip_s, with_prefix
from src.models.clip import embed_images, embed_texts

IOU_MATCH = 0.5
CLIP_CANDIDATES = 10  # the shape's own phrase and 9 distractors
DETECT_BATCH = 8


def _split(coco_root: Path, split: str) -> tuple[pd.DataFrame, Path]:
    """One row per ground-truth shape (image, its phrase, its box) and the image folder."""
    ann = coco_root / "annotations"
    images = load_captions(ann / f"captions_{split}2017.json").images
    instances: list[CocoInstance] = load_instances(ann / f"instances_{split}2017.json")
    rows = [(i.image_id, images[i.image_id].file_name, images[i.image_id].width,
             images[i.image_id].height, f"{i.size} {i.category}", *i.box_xyxy)
            for i in instances]
    truth = pd.DataFrame(rows, columns=["image_id", "file_name", "width", "height", "phrase",
                                        "x0", "y0", "x1", "y1"])
    return truth.sort_values(["image_id", "phrase"], ignore_index=True), coco_root / f"{split}2017"


def detector_recall(model: GroundingDinoForObjectDetection, processor: ProcessorMixin,
                    coco_root: Path, split: str) -> dict[str, float]:
    """Share of shapes whose phrase's top-scoring box has IoU >= 0.5 with the shape."""
    truth, image_dir = _split(coco_root, split)
    plan = plan_queries(truth, processor.tokenizer, model.config.max_text_len)
    batches = image_batches(plan.images, range(len(plan.images)), DETECT_BATCH,
                            processor.image_processor)
    loader = detection_loader(plan.images, batches, image_dir, processor,
                              model.config.max_text_len, num_workers=0)
    parts = [result.columns for result in iter_detections(model, plan.images, loader,
                                                           floor_score=0.0, autocast_dtype=None)
             if result.columns is not None]
    detections = detections_frame(parts)
    top = (detections.sort_values("phrase_score", ascending=False, kind="stable")
           .drop_duplicates(["image_id", "phrase"]))
    found = truth.merge(top, on=["image_id", "phrase"], how="left", suffixes=("", "_box"))
    boxes = found[["box_x0", "box_y0", "box_x1", "box_y1"]].fillna(0).to_numpy(np.float64)
    gt = found[["x0", "y0", "x1", "y1"]].to_numpy(np.float64)
    ious = np.array([box_iou(b[None], g[None])[0, 0] for b, g in zip(boxes, gt, strict=True)])
    return {"detector_recall_iou50": float((ious >= IOU_MATCH).mean()),
            "detector_mean_iou": float(ious.mean()), "detector_shapes": len(truth)}


def _distractors(phrase: str, rng: random.Random) -> list[str]:
    others = [p for p in PHRASES if object_name(p) != object_name(phrase)]
    return rng.sample(others, CLIP_CANDIDATES - 1)


@torch.inference_mode()
def clip_accuracy(model: CLIPModel, processor: ProcessorMixin, coco_root: Path, split: str,
                  pad_frac: float, seed: int) -> dict[str, float]:
    """Share of shape crops whose own phrase beats 9 distractors (another colour or kind)."""
    truth, image_dir = _split(coco_root, split)
    crops, rows = [], defaultdict(list)
    for row in truth.itertuples():
        rows[row.file_name].append(row)
    for file_name, image_rows in rows.items():
        image = load_rgb(resolve_image_path(image_dir, file_name))
        crops += [crop_box(image, (r.x0, r.y0, r.x1, r.y1), pad_frac) for r in image_rows]
    phrases = [r.phrase for image_rows in rows.values() for r in image_rows]
    text = embed_texts(model, processor, list(PHRASES))
    cosines = embed_images(model, processor, crops) @ text.T
    rng = random.Random(f"{seed}-clip-eval")
    correct = []
    for scores, phrase in zip(cosines.tolist(), phrases, strict=True):
        candidates = [phrase, *_distractors(phrase, rng)]
        best = max(candidates, key=lambda p: scores[PHRASES.index(p)])
        correct.append(best == phrase)
    own = [scores[PHRASES.index(p)] for scores, p in zip(cosines.tolist(), phrases, strict=True)]
    return {"clip_top1_of_10": float(np.mean(correct)), "clip_mean_cos_own": float(np.mean(own)),
            "clip_mean_cos_other": float(cosines.mean()), "clip_crops": len(phrases)}


def _caption_pairs(captions: dict[int, list[str]], seed: int) -> list[tuple[int, str, str]]:
    """(image, one of its captions, a caption of another image that it lacks), seeded."""
    rng = random.Random(f"{seed}-clipscore-eval")
    ids = sorted(captions)
    pairs = []
    for image_id in ids:
        own = rng.choice(captions[image_id])
        others = [i for i in ids if i != image_id
                  and own.lower() not in (c.lower() for c in captions[i])]
        pairs.append((image_id, own, rng.choice(captions[rng.choice(others)])))
    return pairs


@torch.inference_mode()
def clipscore_ranking(model: CLIPModel, processor: ProcessorMixin, coco_root: Path, split: str,
                      seed: int) -> dict[str, float]:
    """Share of images whose CLIPScore ranks their own caption above another image's."""
    caption_set = load_captions(coco_root / "annotations" / f"captions_{split}2017.json")
    captions = {image_id: [c.caption for c in rows]
                for image_id, rows in caption_set.by_image().items()}
    pairs = _caption_pairs(captions, seed)
    image_dir = coco_root / f"{split}2017"
    images = [load_rgb(resolve_image_path(image_dir, caption_set.images[i].file_name))
              for i, _, _ in pairs]
    image_emb = embed_images(model, processor, images)
    own = clip_s(image_emb, embed_texts(model, processor, [with_prefix(o) for _, o, _ in pairs]))
    other = clip_s(image_emb,
                   embed_texts(model, processor, [with_prefix(w) for _, _, w in pairs]))
    return {"clipscore_own_above_other": float((own > other).float().mean()),
            "clipscore_own_caption": float(own.mean()),
            "clipscore_other_caption": float(other.mean()), "clipscore_images": len(pairs)}
