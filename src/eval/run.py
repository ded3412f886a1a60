"""One evaluation, shared by the `evaluate` stage and the seed command `src.eval.evaluate_coco`.

Select val images -> caption them (resumable, data-parallel over the processes of
`state`, by `src.data.shard_map`) -> score on the main process (pycocoevalcap + CLIPScore)
-> write the metrics JSON, COCO-format predictions, a per-image CSV and a gallery, each atomically.
Every score of the metrics JSON that is a statistic over images carries a 95 % bootstrap
interval over images (`*_ci95`, one seeded draw: `bootstrap_resamples`, `bootstrap_seed`);
CHAIR object hallucination (`chair_i`, `chair_s`) needs the instances file of the val images.
"""

from __future__ import annotations

import csv
import gc
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from accelerate import PartialState

from src.data.atomic import atomic_path, atomic_write_json, remove_stale_temps
from src.data.coco import CaptionSet, load_captions, select_images
from src.data.images import ImageDataset, read_image
from src.data.shard_map import digest, map_image_shards
from src.data.skips import Skip, SkipCounter
from src.eval.caption_gallery import GalleryRow, render_gallery, render_notice
from src.eval.captioner import load_captioner
from src.eval.chair import ChairCaption, chair_counts, chair_metrics, chair_per_image, chair_problem
from src.eval.clipscore import score_images
from src.eval.generate import CaptionSettings, caption_shards, predictions_frame
from src.eval.intervals import BOOTSTRAP_SEED, NUM_RESAMPLES, format_interval
from src.eval.metrics import caption_intervals, find_java_bin_dir, score_captions
from src.models.clip import load_clip
from src.models.device_policy import llava_dtype
from src.models.weights import model_identity
from src.params import Params
from src.preflight import model_problem, require_models, require_paths

logger = logging.getLogger(__name__)

CLIP_BATCH_SIZE = 64  # CLIP forwards are cheap next to generation; this only sets speed
GALLERY_REFERENCES = 2
SCORE_KEYS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rougeL", "cider",
              "clipscore", "refclipscore")
CHAIR_KEYS = ("chair_mentions", "chair_hallucinated")  # per-image counts, for paired CHAIR_i


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
    pad_to_square: bool = False  # the base model's preprocessing (an adapter brings its own)
    instances_path: Path | None = None  # the val images' instances JSON, for CHAIR
    model_revision: str | None = None  # hub revisions of model_id and clip_model_id (None = main)
    clip_model_revision: str | None = None

    @classmethod
    def from_params(cls, params: Params, *, adapter_dir: Path | None, images_dir: Path,
                    ann_path: Path, instances_path: Path | None = None) -> EvalConfig:
        """The `evaluate` knobs, model ids and seed of params.yaml, for these files."""
        knobs = params.evaluate
        return cls(model_id=params.model_id, adapter_dir=adapter_dir,
                   clip_model_id=params.clip_model_id, images_dir=images_dir, ann_path=ann_path,
                   num_examples=knobs.num_examples, seed=params.seed,
                   caption=CaptionSettings(params.caption_prompt, knobs.max_new_tokens,
                                           knobs.num_beams),
                   batch_size=knobs.batch_size, num_workers=knobs.num_workers, meteor=knobs.meteor,
                   gallery_images=knobs.gallery_images,
                   pad_to_square=params.train.pad_to_square, instances_path=instances_path,
                   model_revision=params.model_revision,
                   clip_model_revision=params.clip_model_revision)


@dataclass(frozen=True)
class EvalOutputs:
    metrics: Path
    predictions: Path
    per_image: Path | None = None
    gallery: Path | None = None

    @property
    def shards_dir(self) -> Path:
        """Where finished caption shards live until the predictions are written."""
        return self.predictions.with_name(f".{self.predictions.name}.shards")


def eval_images(captions: CaptionSet, images_dir: Path, num_examples: int,
                seed: int) -> tuple[ImageDataset, SkipCounter]:
    """The seeded val subset (captioned images only) and the images with no reference."""
    chosen = select_images(captions, num_examples, seed)
    referenced = {c.image_id for c in captions.captions}
    no_refs = SkipCounter({"no_refs": [i for i in captions.images if i not in referenced]})
    return ImageDataset([(image.image_id, image.file_name) for image in chosen],
                        images_dir), no_refs


def _generate(config: EvalConfig, images: ImageDataset, shards_dir: Path,
              state: PartialState) -> tuple[dict[int, str], SkipCounter, str] | None:
    """Caption every image no finished shard holds; all captions and skips, and the base
    model's identity, on the main process. A shard is one batch: a killed run redoes at most
    the batches in flight."""
    dtype = llava_dtype(state.device)
    model, processor = load_captioner(config.model_id, config.adapter_dir,
                                      pad_to_square=config.pad_to_square,
                                      device=state.device, dtype=dtype,
                                      revision=config.model_revision,
                                      prompts={"caption_prompt": config.caption.prompt})
    base = model_identity(config.model_id, config.model_revision, param="model")
    weights = [base, config.adapter_dir and model_identity(config.adapter_dir)]
    work = partial(caption_shards, model, processor, images, settings=config.caption,
                   batch_size=config.batch_size, num_workers=config.num_workers,
                   progress=state.is_local_main_process)
    merged = map_image_shards(
        [(image_id, digest(file_name)) for image_id, file_name in images.items], work,
        code=__name__, params=vars(config.caption), model=digest(weights), processor=processor,
        image_dir=config.images_dir, shards_dir=shards_dir, shard_size=config.batch_size,
        state=state, empty=predictions_frame([], []))
    del work, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if merged is None:
        return None
    frame, skips = merged
    return (dict(zip(frame["image_id"].tolist(), frame["caption"].tolist(), strict=True)), skips,
            base)


def _metrics(corpus: Mapping[str, float], cider_wrong_images: float | None,
             clip: Mapping[int, tuple[float, float]], n_images: int, n_empty: int,
             skips: SkipCounter) -> dict[str, float | int | None]:
    metrics: dict[str, float | int | None] = dict(corpus)
    if corpus:
        metrics["cider_wrong_images"] = cider_wrong_images
    if clip:
        metrics["clipscore"] = sum(c for c, _ in clip.values()) / len(clip)
        metrics["refclipscore"] = sum(r for _, r in clip.values()) / len(clip)
    metrics.update(n_images=n_images, n_empty=n_empty, skipped=skips.total())
    metrics.update({f"skipped_{reason}": count for reason, count in skips.counts().items()})
    return metrics


def score(captions: Mapping[int, str], references: Mapping[int, Sequence[str]],
          images: ImageDataset, *, clip_model_id: str | None, meteor: bool, num_workers: int,
          clip_revision: str | None = None,
          device: torch.device, skips: SkipCounter | None = None,
          instances_path: Path | None = None,
          ) -> tuple[dict[str, float | int], list[dict], dict[int, ChairCaption]]:
    """Corpus metrics (with `skips` counted in), per-image rows and CHAIR per image for
    `captions`.

    `images` are read for CLIPScore (CLIP at `clip_revision`); without `clip_model_id` it is
    left out. Without a readable `instances_path`, CHAIR is left out: `chair_i`/`chair_s` are
    null and `chair_unavailable` says why. Never fails on ids without references, empty
    captions (both counted) or nothing left to score (metrics without scores).
    """
    skips = SkipCounter().update(skips or SkipCounter())
    referenced = {i for i, refs in references.items() if refs}
    skips.update(SkipCounter({"no_refs": sorted(captions.keys() - referenced)}))
    if not captions.keys() & referenced:
        logger.error("no prediction has references: nothing to score")
        return _metrics({}, None, {}, 0, 0, skips), [], {}
    scores = score_captions(captions, references, meteor=meteor)
    file_names = dict(images.items)
    scored = ImageDataset([item for item in images.items if item[0] in scores.per_image],
                          images.image_root)
    clip = {}
    if clip_model_id is not None:
        clip_model, clip_processor = load_clip(clip_model_id, device, revision=clip_revision)
        clip = score_images(clip_model, clip_processor, scored, captions, references,
                            batch_size=CLIP_BATCH_SIZE, num_workers=num_workers)
    image_ids = sorted(scores.per_image)
    problem = chair_problem(instances_path)
    chair = {} if problem else chair_per_image({i: captions[i] for i in image_ids}, references,
                                               instances_path)
    nan = (float("nan"), float("nan"))
    rows = [{"image_id": i, "file_name": Path(file_names[i]).name if i in file_names else "",
             "caption": captions[i], **scores.per_image[i],
             "clipscore": clip.get(i, nan)[0], "refclipscore": clip.get(i, nan)[1]}
            for i in image_ids]
    if problem is None:
        for row, *counts in zip(rows, *chair_counts(chair, image_ids), strict=True):
            row.update(zip(CHAIR_KEYS, map(int, counts), strict=True))
    metrics = _metrics(scores.corpus, scores.cider_wrong_images, clip, scores.n_images,
                       scores.n_empty_predictions, skips)
    draw = {"num_resamples": NUM_RESAMPLES, "seed": BOOTSTRAP_SEED}
    metrics.update(caption_intervals(scores, **draw))
    metrics.update(chair_metrics(chair, **draw) if problem is None else
                   {"chair_i": None, "chair_s": None, "chair_unavailable": problem})
    metrics.update(bootstrap_resamples=NUM_RESAMPLES, bootstrap_seed=BOOTSTRAP_SEED)
    return metrics, rows, chair


def _gallery(rows: Sequence[dict], images: ImageDataset,
             references: Mapping[int, Sequence[str]], count: int,
             chair: Mapping[int, ChairCaption]) -> list[GalleryRow]:
    """The first `count` scored images; CHAIR's hallucinated object words marked in red."""
    file_names = dict(images.items)
    gallery = []
    for row in rows[:count]:
        image = read_image(images.image_root, row["image_id"], file_names[row["image_id"]])
        if not isinstance(image, Skip):
            found = chair.get(row["image_id"])
            objects = (f"   hallucinated (red): {len(found.hallucinated)} of "
                       f"{len(found.mentions)} objects" if found is not None else "")
            gallery.append(GalleryRow(
                image=image, prediction=row["caption"],
                title=f"image {row['image_id']}   CIDEr {row['cider']:.3f}   "
                      f"CLIP-S {row['clipscore']:.3f}{objects}",
                references=list(references[row["image_id"]])[:GALLERY_REFERENCES],
                marked=[(m.start, m.end) for m in found.hallucinated] if found else []))
    return gallery


def write_outputs(outputs: EvalOutputs, metrics: Mapping[str, float | int],
                  captions: Mapping[int, str], rows: Sequence[dict],
                  gallery: Sequence[GalleryRow], notice: str = "nothing was scored") -> None:
    """All outputs, metrics last (its presence means the rest is there); `notice` is drawn
    instead of an empty gallery."""
    atomic_write_json(outputs.predictions, [{"image_id": i, "caption": captions[i]}
                                            for i in sorted(captions)])
    if outputs.per_image is not None:
        columns = ["image_id", "file_name", "caption", *(k for k in (*SCORE_KEYS, *CHAIR_KEYS)
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
    require_models((config.model_id, config.model_revision))
    find_java_bin_dir()
    clip_problem = model_problem(config.clip_model_id, config.clip_model_revision)
    if clip_problem is not None and state.is_main_process:
        logger.warning("CLIPScore will be left out: %s", clip_problem)
    for path in (outputs.metrics, outputs.predictions, outputs.per_image, outputs.gallery):
        if path is not None:
            remove_stale_temps(path.parent, path.name)
    if chair_problem(config.instances_path) is not None and state.is_main_process:
        logger.warning("CHAIR will be left out: %s", chair_problem(config.instances_path))
    caption_set = load_captions(config.ann_path)
    images, skips = eval_images(caption_set, config.images_dir, config.num_examples,
                                config.seed)
    finished = _generate(config, images, outputs.shards_dir, state)
    if finished is None:
        return None
    captions, generation_skips, base = finished
    skips.update(generation_skips)
    references = {i: [c.caption for c in caps] for i, caps in caption_set.by_image().items()}
    metrics, rows, chair = score(captions, references, images,
                                 clip_model_id=None if clip_problem else config.clip_model_id,
                                 clip_revision=config.clip_model_revision,
                                 meteor=config.meteor, num_workers=config.num_workers,
                                 device=state.device, skips=skips,
                                 instances_path=config.instances_path)
    if clip_problem is not None:
        metrics.update(clipscore=None, refclipscore=None, clipscore_unavailable=clip_problem)
    else:
        metrics["clip_model"] = model_identity(config.clip_model_id, config.clip_model_revision,
                                               param="clip_model")
    metrics["model"] = base  # the base weights captioned with: a hub commit or folder digest
    gallery = _gallery(rows, images, references, config.gallery_images, chair)
    write_outputs(outputs, metrics, captions, rows, gallery)
    shutil.rmtree(outputs.shards_dir)
    return metrics


def summary(metrics: Mapping[str, float | int]) -> str:
    """One line: the headline scores (95 % intervals in brackets) and what was skipped."""
    scores = ", ".join(f"{k} {metrics[k]:.4f}{format_interval(metrics, k)}"
                       for k in (*SCORE_KEYS, "cider_wrong_images", "chair_i", "chair_s")
                       if metrics.get(k) is not None)
    reasons = ", ".join(f"{value} {key.removeprefix('skipped_')}"
                        for key, value in sorted(metrics.items())
                        if key.startswith("skipped_"))
    return (f"scored {metrics['n_images']} images ({metrics['n_empty']} empty captions): "
            f"{scores or 'no scores'}; skipped {metrics['skipped']}"
            f"{f' ({reasons})' if reasons else ''}"
            f"{'; CLIPScore unavailable' if 'clipscore_unavailable' in metrics else ''}"
            f"{'; CHAIR unavailable' if 'chair_unavailable' in metrics else ''}")
