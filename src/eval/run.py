"""One evaluation, shared by the `evaluate` stage and the seed command `src.eval.evaluate_coco`.

Select val images -> caption them (resumable, data-parallel over the processes of
`state`) -> score on the main process (pycocoevalcap + CLIPScore) -> write the metrics
JSON, COCO-format predictions, a per-image CSV and a gallery, each atomically.
"""

from __future__ import annotations

import csv
import gc
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import PartialState

from src.data.atomic import atomic_path, atomic_write_json
from src.data.coco import CaptionSet, load_captions, resolve_image_path, select_images
from src.data.images import SKIP_REASONS, load_rgb
from src.eval.captioner import load_captioner
from src.eval.clipscore import score_images
from src.eval.dataset import EvalImage
from src.eval.gallery import GalleryRow, render_gallery, render_notice
from src.eval.generate import CaptionSettings, generate_predictions
from src.eval.metrics import find_java_bin_dir, score_captions
from src.eval.prediction_log import (
    Prediction,
    PredictionLog,
    fingerprint,
    remove_logs,
    run_key,
)
from src.models.clip import load_clip
from src.models.device_policy import llava_dtype, resolve_device
from src.params import Params
from src.preflight import model_problem, require_models, require_paths

logger = logging.getLogger(__name__)

SKIP_KEYS = (*SKIP_REASONS, "no_refs")  # metrics.json: skipped_<key> for each that occurred
CLIP_BATCH_SIZE = 64  # CLIP forwards are cheap next to generation; this only sets speed
GALLERY_REFERENCES = 2
SCORE_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider",
              "clipscore", "refclipscore")


@dataclass(frozen=True)
class EvalConfig:
    model_id: str
    adapter_dir: Path | None  # None: the zero-shot base model
    clip_model_id: str
    images_dir: Path
    ann_path: Path
    num_examples: int  # 0 = every captioned image
    seed: int
    caption: CaptionSettings
    batch_size: int
    num_workers: int
    meteor: bool
    gallery_images: int

    @classmethod
    def from_params(cls, params: Params, *, adapter_dir: Path | None, images_dir: Path,
                    ann_path: Path, num_workers: int) -> EvalConfig:
        """The `evaluate` knobs, model ids and seed of params.yaml, for these files."""
        knobs = params.evaluate
        return cls(model_id=params.model_id, adapter_dir=adapter_dir,
                   clip_model_id=params.clip_model_id, images_dir=images_dir, ann_path=ann_path,
                   num_examples=knobs.num_examples, seed=params.seed,
                   caption=CaptionSettings(knobs.prompt, knobs.max_new_tokens, knobs.num_beams),
                   batch_size=knobs.batch_size, num_workers=num_workers, meteor=knobs.meteor,
                   gallery_images=knobs.gallery_images)


@dataclass(frozen=True)
class EvalOutputs:
    metrics: Path
    predictions: Path
    per_image: Path | None = None
    gallery: Path | None = None

    @property
    def log_prefix(self) -> Path:
        """Where the resumable per-process logs live until the predictions are written."""
        return self.predictions.with_name(f".{self.predictions.name}.partial")


def process_state() -> PartialState:
    """This run's processes (torchrun / accelerate launch, else one). Without a GPU accelerate
    only joins a multi-process run when told to use the CPU (gloo)."""
    return PartialState(cpu=resolve_device().type == "cpu")


def eval_images(captions: CaptionSet, images_dir: Path, num_examples: int,
                seed: int) -> tuple[list[EvalImage], int]:
    """The seeded val subset (captioned images only) and how many images have no reference."""
    chosen = select_images(captions, num_examples, seed)
    n_no_refs = len(captions.images) - len({c.image_id for c in captions.captions})
    items = [EvalImage(image.image_id, resolve_image_path(images_dir, image.file_name))
             for image in chosen]
    return items, n_no_refs


def _generate(config: EvalConfig, items: Sequence[EvalImage], log_prefix: Path,
              state: PartialState) -> dict[int, Prediction] | None:
    """Caption every item not already in the logs; the merged result on the main process."""
    dtype = llava_dtype(state.device)
    log = PredictionLog(log_prefix, rank=state.process_index, key=run_key({
        "model": fingerprint(config.model_id),
        "adapter": fingerprint(config.adapter_dir) if config.adapter_dir else None,
        "images": str(config.images_dir.resolve()),
        "ann": fingerprint(config.ann_path),
        "caption": vars(config.caption),
        "dtype": str(dtype),
    }))
    done = log.load()
    state.wait_for_everyone()  # every process has read the logs before any appends
    todo = [item for item in items if item.image_id not in done]
    mine = todo[state.process_index::state.num_processes]
    if state.is_main_process:
        logger.info("%d / %d images already captioned; %d to go on %d process(es)",
                    len(items) - len(todo), len(items), len(todo), state.num_processes)
    if mine:
        model, processor = load_captioner(config.model_id, config.adapter_dir,
                                          device=state.device, dtype=dtype)
        generate_predictions(model, processor, mine, config.caption, log,
                             batch_size=config.batch_size, num_workers=config.num_workers,
                             progress=state.is_local_main_process)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    wanted = {item.image_id for item in items}
    return {i: p for i, p in log.load().items() if i in wanted}


def _metrics(corpus: Mapping[str, float], clip: Mapping[int, tuple[float, float]],
             n_images: int, n_empty: int, skips: Counter) -> dict[str, float | int]:
    metrics: dict[str, float | int] = dict(corpus)
    if clip:
        metrics["clipscore"] = sum(c for c, _ in clip.values()) / len(clip)
        metrics["refclipscore"] = sum(r for _, r in clip.values()) / len(clip)
    metrics.update(n_images=n_images, n_empty=n_empty, skipped=sum(skips.values()))
    metrics.update({f"skipped_{key}": skips[key] for key in SKIP_KEYS if skips[key]})
    return metrics


def score(captions: Mapping[int, str], references: Mapping[int, Sequence[str]],
          items: Sequence[EvalImage], *, clip_model_id: str | None, meteor: bool,
          num_workers: int,
          device: torch.device, skips: Counter | None = None,
          ) -> tuple[dict[str, float | int], list[dict]]:
    """Corpus metrics (with `skips` counted in) and per-image rows for `captions`.

    `items` give the image files for CLIPScore; without `clip_model_id` it is left out.
    Never fails on ids without references, empty captions (both counted) or nothing left
    to score (metrics without scores).
    """
    skips = Counter() if skips is None else Counter(skips)
    referenced = {i for i, refs in references.items() if refs}
    skips["no_refs"] += len(captions.keys() - referenced)
    if not captions.keys() & referenced:
        logger.error("no prediction has references: nothing to score")
        return _metrics({}, {}, 0, 0, skips), []
    scores = score_captions(captions, references, meteor=meteor)
    paths = {item.image_id: item.path for item in items}
    scored_items = [item for item in items if item.image_id in scores.per_image]
    clip = {}
    if clip_model_id is not None:
        clip_model, clip_processor = load_clip(clip_model_id, device)
        clip = score_images(clip_model, clip_processor, scored_items, captions, references,
                            batch_size=CLIP_BATCH_SIZE, num_workers=num_workers)
    nan = (float("nan"), float("nan"))
    rows = [{"image_id": i, "file_name": paths[i].name if i in paths else "",
             "caption": captions[i], **scores.per_image[i],
             "clipscore": clip.get(i, nan)[0], "refclipscore": clip.get(i, nan)[1]}
            for i in sorted(scores.per_image)]
    metrics = _metrics(scores.corpus, clip, scores.n_images, scores.n_empty_predictions, skips)
    return metrics, rows


def _gallery(rows: Sequence[dict], items: Sequence[EvalImage],
             references: Mapping[int, Sequence[str]], count: int) -> list[GalleryRow]:
    paths = {item.image_id: item.path for item in items}
    return [GalleryRow(image=load_rgb(paths[row["image_id"]]),
                       title=f"image {row['image_id']}   CIDEr {row['cider']:.3f}   "
                             f"CLIP-S {row['clipscore']:.3f}",
                       prediction=row["caption"],
                       references=list(references[row["image_id"]])[:GALLERY_REFERENCES])
            for row in rows[:count] if row["image_id"] in paths]


def write_outputs(outputs: EvalOutputs, metrics: Mapping[str, float | int],
                  captions: Mapping[int, str], rows: Sequence[dict],
                  gallery: Sequence[GalleryRow], notice: str = "nothing was scored") -> None:
    """All outputs, metrics last (its presence means the rest is there); `notice` is drawn
    instead of an empty gallery."""
    atomic_write_json(outputs.predictions, [{"image_id": i, "caption": captions[i]}
                                            for i in sorted(captions)])
    if outputs.per_image is not None:
        columns = ["image_id", "file_name", "caption", *(k for k in SCORE_KEYS
                                                        if rows and k in rows[0])]
        with atomic_path(outputs.per_image) as tmp, open(tmp, "w", newline="",
                                                         encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    if outputs.gallery is not None:
        with atomic_path(outputs.gallery) as tmp:
            picture = render_gallery(gallery) if gallery else render_notice(notice)
            picture.save(tmp, format="PNG")
    atomic_write_json(outputs.metrics, dict(metrics))


def evaluate(config: EvalConfig, outputs: EvalOutputs,
             state: PartialState) -> dict[str, float | int] | None:
    """The whole evaluation; returns the metrics on the main process, None on the others.

    Before any captioning it checks the inputs, the captioner and Java (pycocoevalcap), and
    fails at once when one is missing. An unloadable CLIP only leaves CLIPScore out:
    metrics.json then holds `clipscore: null` and the reason in `clipscore_unavailable`.
    """
    require_paths(config.ann_path, config.images_dir,
                  *([config.adapter_dir] if config.adapter_dir is not None else []))
    require_models(config.model_id)
    find_java_bin_dir()
    clip_problem = model_problem(config.clip_model_id)
    if clip_problem is not None and state.is_main_process:
        logger.warning("CLIPScore will be left out: %s", clip_problem)
    caption_set = load_captions(config.ann_path)
    items, n_no_refs = eval_images(caption_set, config.images_dir, config.num_examples,
                                   config.seed)
    finished = _generate(config, items, outputs.log_prefix, state)
    if finished is None:
        return None
    skips = Counter({"no_refs": n_no_refs})
    skips.update(p.skip for p in finished.values() if p.skip is not None)
    captions = {i: p.caption for i, p in finished.items() if p.caption is not None}
    references = {i: [c.caption for c in caps] for i, caps in caption_set.by_image().items()}
    metrics, rows = score(captions, references, items,
                          clip_model_id=None if clip_problem else config.clip_model_id,
                          meteor=config.meteor, num_workers=config.num_workers,
                          device=state.device, skips=skips)
    if clip_problem is not None:
        metrics.update(clipscore=None, refclipscore=None, clipscore_unavailable=clip_problem)
    gallery = _gallery(rows, items, references, config.gallery_images)
    write_outputs(outputs, metrics, captions, rows, gallery)
    remove_logs(outputs.log_prefix)
    return metrics


def summary(metrics: Mapping[str, float | int]) -> str:
    """One line: the headline scores and what was skipped, by reason."""
    scores = ", ".join(f"{k} {metrics[k]:.4f}" for k in SCORE_KEYS
                       if metrics.get(k) is not None)
    reasons = ", ".join(f"{metrics[f'skipped_{k}']} {k}" for k in SKIP_KEYS
                        if f"skipped_{k}" in metrics)
    return (f"scored {metrics['n_images']} images ({metrics['n_empty']} empty captions): "
            f"{scores or 'no scores'}; skipped {metrics['skipped']}"
            f"{f' ({reasons})' if reasons else ''}"
            f"{'; CLIPScore unavailable' if 'clipscore_unavailable' in metrics else ''}")
