"""GroundingDINO over images that each bring their own phrases: every (box, phrase) candidate.

A box's `box_score` is its highest token probability over the whole prompt (as
GroundingDINO ranks boxes); its `phrase_score` for a phrase is the highest
probability over that phrase's own tokens (a phrase is "in" a box when any of its
tokens is, which is what GroundingDINO's text_threshold tests token by token).
Every pair with both scores at or above a floor is kept, so thresholds can be
chosen later without running the model again.

Batching never changes an image's result: each image is padded to its own canvas
(its resized size rounded up to PAD_MULTIPLE pixels) and a batch only holds images
of one canvas, so the rows do not depend on batch size, shard size or process count
(beyond float rounding). Batches are filled across a process's shards (COCO's many
aspect ratios left a batch within one shard at 5.9 of 8 images on average); an image
waits at most SHARD_LAG shards for batch mates, so a kill loses at most that many more
shards than the one in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader
from transformers import ProcessorMixin
from transformers.image_transforms import get_size_with_aspect_ratio

from src.augment.spans import (
    Prompt,
    build_prompt,
    phrase_token_positions,
    query_text,
    split_into_passes,
)
from src.data.images import ImageDataset
from src.data.skips import Skip, SkipCounter
from src.models.device_policy import oom_advice

logger = logging.getLogger(__name__)

PAD_MULTIPLE = 32  # canvas granularity: 800 px stays 800, 1066 pads to 1088
SHARD_LAG = 2  # shards an image may wait for batch mates of its canvas
DETECTION_COLUMNS = ("image_id", "file_name", "width", "height", "phrase", "phrase_index",
                     "pass_index", "query_index", "box_x0", "box_y0", "box_x1", "box_y1",
                     "box_score", "phrase_score")
DETECTION_DTYPES = {"image_id": "int64", "file_name": "str", "width": "int64", "height": "int64",
                    "phrase": "str", "phrase_index": "int64", "pass_index": "int64",
                    "query_index": "int64", "box_x0": "float32", "box_y0": "float32",
                    "box_x1": "float32", "box_y1": "float32", "box_score": "float32",
                    "phrase_score": "float32"}


@dataclass(frozen=True)
class Query:
    """One forward pass over an image: some of its phrases in one prompt."""

    pass_index: int
    phrase_indices: tuple[int, ...]
    prompt: Prompt


@dataclass(frozen=True)
class ImageQueries:
    image_id: int
    file_name: str
    width: int  # as annotated; boxes use the decoded image's size
    height: int
    phrases: tuple[str, ...]
    queries: tuple[Query, ...]


@dataclass(frozen=True)
class QueryPlan:
    images: list[ImageQueries]
    num_phrases: int
    too_long: list[tuple[int, str]]  # (image_id, phrase) too long for even a prompt of its own


def plan_queries(phrases: pd.DataFrame, tokenizer: object, max_text_len: int) -> QueryPlan:
    """Each image's phrases (in table order) as prompts of at most `max_text_len` tokens."""
    texts = sorted({query_text(p) for p in phrases["phrase"]})
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
    token_counts = {text: len(token_ids) for text, token_ids in zip(texts, ids, strict=True)}
    images, too_long = [], []
    for image_id, group in phrases.groupby("image_id", sort=True):
        image_phrases = tuple(group["phrase"].tolist())
        passes, dropped = split_into_passes([token_counts[query_text(p)] for p in image_phrases],
                                            max_text_len)
        too_long += [(int(image_id), image_phrases[i]) for i in dropped]
        queries = tuple(Query(n, tuple(idx), build_prompt([image_phrases[i] for i in idx]))
                        for n, idx in enumerate(passes))
        first = group.iloc[0]
        images.append(ImageQueries(int(image_id), str(first["file_name"]), int(first["width"]),
                                   int(first["height"]), image_phrases, queries))
    for image_id, phrase in too_long:
        logger.warning("image %d: phrase %r exceeds %d tokens on its own; not queried",
                       image_id, phrase, max_text_len)
    return QueryPlan(images, len(phrases), too_long)


@dataclass
class DetectBatch:
    """Model inputs for one batch: one entry per (image, query); images decoded once."""

    entries: list[tuple[int, int]]  # (image index, query index in ImageQueries.queries)
    sizes: list[tuple[int, int]]  # decoded (width, height) of each entry's image
    inputs: dict[str, torch.Tensor]
    phrase_tokens: torch.Tensor  # (entries, most phrases, text length): the phrase's tokens
    image_indices: list[int]
    skipped: list[Skip] = field(default_factory=list)  # items are image indices

    def pin_memory(self) -> DetectBatch:
        self.inputs = {k: v.pin_memory() for k, v in self.inputs.items()}
        return self


class _Collate:
    """Runs in the DataLoader workers: image preprocessing and tokenisation of a batch."""

    def __init__(self, images: Sequence[ImageQueries], processor: ProcessorMixin,
                 max_text_len: int) -> None:
        self.images = images
        self.processor = processor
        self.max_text_len = max_text_len

    def __call__(self, samples: list[tuple[int, Image.Image | Skip]]) -> DetectBatch:
        batch = DetectBatch([], [], {}, torch.zeros(0, 0, 0, dtype=torch.bool),
                            [index for index, _ in samples])
        pictures, texts = [], []
        for index, loaded in samples:
            if isinstance(loaded, Skip):
                batch.skipped.append(loaded)
                continue
            for query_index, query in enumerate(self.images[index].queries):
                batch.entries.append((index, query_index))
                batch.sizes.append(loaded.size)
                pictures.append(loaded)
                texts.append(query.prompt.text)
        if not batch.entries:
            return batch
        # An image whose decoded size contradicts its annotation (EXIF rotation) can need a
        # bigger canvas than its batch mates; then they share the biggest.
        image_processor = self.processor.image_processor
        height, width = map(max, zip(*(canvas_size(image_processor, *p.size) for p in pictures),
                                     strict=True))
        pixels = image_processor(images=pictures, return_tensors="pt", do_pad=True,
                                 pad_size={"height": height, "width": width})
        tokens = self.processor.tokenizer(texts, padding=True, return_offsets_mapping=True,
                                          return_tensors="pt")
        offsets = tokens.pop("offset_mapping")
        queries = [self.images[i].queries[q] for i, q in batch.entries]
        batch.phrase_tokens = torch.zeros(len(queries), max(len(q.phrase_indices) for q in queries),
                                          offsets.shape[1], dtype=torch.bool)
        for entry, (query, length) in enumerate(zip(queries,
                                                    tokens["attention_mask"].sum(dim=1).tolist(),
                                                    strict=True)):
            if length > self.max_text_len:  # split_into_passes prevents it; never truncate
                raise ValueError(f"prompt {query.prompt.text!r} has {length} tokens, "
                                 f"more than the text encoder's {self.max_text_len}")
            positions = phrase_token_positions(offsets[entry].tolist(), query.prompt.char_spans)
            for slot, tokens_of_phrase in enumerate(positions):
                batch.phrase_tokens[entry, slot, tokens_of_phrase] = True
        batch.inputs = {"pixel_values": pixels["pixel_values"],
                        "pixel_mask": pixels["pixel_mask"], **tokens}
        return batch


def canvas_size(image_processor: object, width: int, height: int) -> tuple[int, int]:
    """(height, width) the detector pads an image of this size to: its resized size
    (shortest/longest edge rule) rounded up to PAD_MULTIPLE."""
    size = image_processor.size
    if not (size.shortest_edge and size.longest_edge):
        raise ValueError(f"detector image size {size} needs shortest_edge and longest_edge")
    resized = get_size_with_aspect_ratio((height, width), size.shortest_edge, size.longest_edge)
    return tuple(-(-side // PAD_MULTIPLE) * PAD_MULTIPLE for side in resized)


def image_batches(images: Sequence[ImageQueries], indices: Sequence[int], batch_size: int,
                  image_processor: object) -> list[list[int]]:
    """`indices` in batches of images of one canvas (by annotated size), by image id."""
    by_canvas: dict[tuple[int, int], list[int]] = {}
    for i in sorted(indices, key=lambda i: images[i].image_id):
        by_canvas.setdefault(canvas_size(image_processor, images[i].width, images[i].height),
                             []).append(i)
    return [group[start:start + batch_size] for _, group in sorted(by_canvas.items())
            for start in range(0, len(group), batch_size)]


def canvas_batches(images: Sequence[ImageQueries], shards: Sequence[Sequence[int]],
                   batch_size: int, image_processor: object,
                   lag: int = SHARD_LAG) -> list[list[int]]:
    """Batches of `batch_size` images of one canvas (by annotated size) across `shards`
    (lists of image indices), each shard's images by image id. A batch is cut when full;
    a canvas's partial batch is cut once its oldest image's shard is `lag` shards back,
    and at the end, so every shard's last batch comes at most `lag` shards later."""
    buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}  # canvas -> (shard, index)
    batches: list[list[int]] = []
    for number, shard in enumerate(shards):
        for i in sorted(shard, key=lambda i: images[i].image_id):
            canvas = canvas_size(image_processor, images[i].width, images[i].height)
            bucket = buckets.setdefault(canvas, [])
            bucket.append((number, i))
            if len(bucket) == batch_size:
                batches.append([index for _, index in buckets.pop(canvas)])
        due = [canvas for canvas, bucket in buckets.items()
               if bucket[0][0] <= number - lag or number == len(shards) - 1]
        for canvas in sorted(due):
            batches.append([index for _, index in buckets.pop(canvas)])
    return batches


def detection_loader(images: Sequence[ImageQueries], batches: list[list[int]], image_dir: Path,
                     processor: ProcessorMixin, max_text_len: int, num_workers: int,
                     pin_memory: bool = False) -> DataLoader:
    """Decoding and preprocessing of `batches` (lists of image indices) in worker processes."""
    dataset = ImageDataset([(index, image.file_name) for index, image in enumerate(images)],
                           image_dir)
    return DataLoader(dataset, batch_sampler=batches,
                      collate_fn=_Collate(images, processor, max_text_len),
                      num_workers=num_workers, pin_memory=pin_memory,
                      prefetch_factor=4 if num_workers else None)


def boxes_to_pixels(boxes_cxcywh: torch.Tensor, width: torch.Tensor | float,
                    height: torch.Tensor | float) -> torch.Tensor:
    """Normalised (cx, cy, w, h) boxes to pixel (x0, y0, x1, y1), clamped to the image.

    `width` and `height` are one image's, or one per box."""
    cx, cy, w, h = boxes_cxcywh.float().unbind(-1)
    width = torch.as_tensor(width, dtype=torch.float32, device=boxes_cxcywh.device)
    height = torch.as_tensor(height, dtype=torch.float32, device=boxes_cxcywh.device)
    scale = torch.stack([width, height, width, height], dim=-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1) * scale
    return torch.minimum(xyxy.clamp(min=0), scale)


def forward(model: torch.nn.Module, batch: DetectBatch,
            autocast_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token probabilities (entries, queries, max_text_len) and boxes (entries, queries, 4)."""
    inputs = {k: v.to(model.device, non_blocking=True) for k, v in batch.inputs.items()}
    with torch.autocast(model.device.type, dtype=autocast_dtype or torch.float32,
                        enabled=autocast_dtype is not None):
        outputs = model(**inputs)
    return outputs.logits.float().sigmoid(), outputs.pred_boxes.float()


def candidates(images: Sequence[ImageQueries], batch: DetectBatch, probs: torch.Tensor,
               boxes: torch.Tensor, floor_score: float) -> dict[str, np.ndarray]:
    """Every (box, phrase) of the batch with box_score and phrase_score >= floor_score.

    Computed on the model's device for the whole batch; only kept rows leave it.
    """
    device = probs.device
    box_scores = probs.max(dim=-1).values  # (entries, queries): over every text token
    mask = batch.phrase_tokens.to(device)  # (entries, phrases, tokens)
    tokens = probs[:, :, :mask.shape[-1]]
    phrase_scores = (tokens[:, :, None, :] * mask[:, None, :, :]).amax(dim=-1)
    keep = ((box_scores[:, :, None] >= floor_score) & (phrase_scores >= floor_score)
            & mask.any(dim=-1)[:, None, :])
    entry, query, slot = keep.nonzero(as_tuple=True)
    sizes = torch.tensor(batch.sizes, dtype=torch.float32, device=device)[entry]
    xyxy = boxes_to_pixels(boxes[entry, query], sizes[:, 0], sizes[:, 1])
    kept = {"box": xyxy, "box_score": box_scores[entry, query],
            "phrase_score": phrase_scores[entry, query, slot], "entry": entry, "slot": slot,
            "query": query}
    kept = {name: values.cpu().numpy() for name, values in kept.items()}
    entry, slot = kept["entry"], kept["slot"]

    queries = [images[i].queries[q] for i, q in batch.entries]
    phrase_index = np.full((len(queries), batch.phrase_tokens.shape[1]), -1, dtype=np.int64)
    for n, query in enumerate(queries):
        phrase_index[n, :len(query.phrase_indices)] = query.phrase_indices
    entry_images = [images[i] for i, _ in batch.entries]
    phrases = np.array([[image.phrases[p] if p >= 0 else "" for p in row]
                        for image, row in zip(entry_images, phrase_index, strict=True)],
                       dtype=object)
    widths, heights = np.array(batch.sizes, dtype=np.int64).reshape(-1, 2).T
    return {
        "image_id": np.array([i.image_id for i in entry_images], dtype=np.int64)[entry],
        "file_name": np.array([i.file_name for i in entry_images], dtype=object)[entry],
        "width": widths[entry], "height": heights[entry],
        "phrase": phrases[entry, slot], "phrase_index": phrase_index[entry, slot],
        "pass_index": np.array([q.pass_index for q in queries], dtype=np.int64)[entry],
        "query_index": kept["query"].astype(np.int64),
        "box_x0": kept["box"][:, 0], "box_y0": kept["box"][:, 1],
        "box_x1": kept["box"][:, 2], "box_y1": kept["box"][:, 3],
        "box_score": kept["box_score"], "phrase_score": kept["phrase_score"],
    }


def detections_frame(parts: Sequence[dict[str, np.ndarray]]) -> pd.DataFrame:
    """Candidate columns of several batches as one table, typed, in (image, phrase, box) order."""
    columns = {name: np.concatenate([part[name] for part in parts]) if parts else []
               for name in DETECTION_COLUMNS}
    frame = pd.DataFrame(columns, columns=list(DETECTION_COLUMNS)).astype(DETECTION_DTYPES)
    return frame.sort_values(["image_id", "phrase_index", "query_index"], kind="stable",
                             ignore_index=True)


@dataclass(frozen=True)
class BatchResult:
    image_indices: list[int]
    columns: dict[str, np.ndarray] | None  # None when no image of the batch could be read
    skipped: list[Skip]


def iter_detections(model: torch.nn.Module, images: Sequence[ImageQueries],
                    loader: DataLoader, floor_score: float,
                    autocast_dtype: torch.dtype | None) -> Iterator[BatchResult]:
    """Run the model over `loader`'s batches; yields each batch's candidates as it finishes."""
    for batch in loader:
        columns = None
        if batch.entries:
            with torch.inference_mode():
                probs, boxes = forward(model, batch, autocast_dtype)
                columns = candidates(images, batch, probs, boxes, floor_score)
        yield BatchResult(batch.image_indices, columns, batch.skipped)


def detect_shards(model: torch.nn.Module, processor: ProcessorMixin,
                  images: Sequence[ImageQueries], shards: Sequence[Sequence[int]],
                  image_dir: Path, *, floor_score: float, batch_size: int, num_workers: int,
                  max_text_len: int, autocast_dtype: torch.dtype | None = None,
                  ) -> Iterator[tuple[list[int], pd.DataFrame, SkipCounter]]:
    """Detect in `shards` (lists of image indices) with one DataLoader; yields each shard's
    (indices, candidates, skips by image id) as soon as its last image is done."""
    batches = canvas_batches(images, shards, batch_size, processor.image_processor)
    loader = detection_loader(images, batches, image_dir, processor, max_text_len, num_workers,
                              pin_memory=model.device.type == "cuda")
    shard_of = {i: number for number, shard in enumerate(shards) for i in shard}
    waiting = [len(shard) for shard in shards]
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in shards]
    skipped: list[list[Skip]] = [[] for _ in shards]
    with oom_advice("detect", f"lower detect.batch_size (now {batch_size}; the seed "
                    "command's --batch-size)"):
        for result in iter_detections(model, images, loader, floor_score, autocast_dtype):
            touched = sorted({shard_of[i] for i in result.image_indices})
            for i in result.image_indices:
                waiting[shard_of[i]] -= 1
            for skip in result.skipped:
                skipped[shard_of[skip.item]].append(replace(skip, item=images[skip.item].image_id))
            for number in touched:
                if result.columns is not None:
                    ids = [images[i].image_id for i in result.image_indices
                           if shard_of[i] == number]
                    rows = np.isin(result.columns["image_id"], ids)
                    parts[number].append({name: values[rows]
                                          for name, values in result.columns.items()})
                if waiting[number] == 0:
                    yield (list(shards[number]), detections_frame(parts[number]),
                           SkipCounter.of(skipped[number]))
                    parts[number], skipped[number] = [], []
