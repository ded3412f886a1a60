"""params.yaml parsed into frozen dataclasses, so a typo or a missing key fails at start."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class DemoParams:
    num_train: int
    num_val: int


@dataclass(frozen=True)
class PhrasesParams:
    spacy_model: str
    max_phrases_per_image: int
    max_phrase_words: int


@dataclass(frozen=True)
class DetectParams:
    floor_score: float
    batch_size: int
    num_workers: int
    shard_size: int


@dataclass(frozen=True)
class ClipScoreParams:
    min_box_frac: float
    crop_pad_frac: float
    caption_template: str
    batch_size: int


@dataclass(frozen=True)
class AssembleParams:
    nms_iou: float
    full_prompt: str
    region_prompt: str
    region_format: str
    max_region_ratio: float
    gallery_images: int


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    max_steps: int
    bsz: int
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    image_size: int
    pad_to_square: bool
    load_in_4bit: bool
    gradient_checkpointing: bool
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lora_target: str
    train_projector: bool
    max_length: int
    val_examples: int
    eval_every: int
    save_every: int
    log_every: int


@dataclass(frozen=True)
class EvaluateParams:
    num_examples: int
    batch_size: int
    max_new_tokens: int
    num_beams: int
    prompt: str
    baseline: bool
    meteor: bool
    gallery_images: int


@dataclass(frozen=True)
class Params:
    profile: str
    seed: int
    demo: DemoParams
    detector_id: str
    clip_model_id: str
    model_id: str
    max_images: int
    box_threshold: float
    text_threshold: float
    clip_threshold: float
    phrases: PhrasesParams
    detect: DetectParams
    clip_score: ClipScoreParams
    assemble: AssembleParams
    train: TrainParams
    evaluate: EvaluateParams


def _build(cls: type, raw: object, where: str) -> object:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    missing = sorted(names - set(raw))
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {unknown}, missing keys {missing}")
    values = {}
    for name, hint in hints.items():
        value = raw[name]
        key = f"{where}.{name}"
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            values[name] = float(value)
        elif not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ValueError(f"{key}: expected {hint.__name__}, got {value!r}")
        else:
            values[name] = value
    return cls(**values)


def load_params(path: Path = Path("params.yaml")) -> Params:
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    params = _build(Params, raw, str(path))
    if params.profile not in ("coco", "demo"):
        raise ValueError(f"{path}: profile must be 'coco' or 'demo', got {params.profile!r}")
    return params


def flat_keys(cls: type = Params, prefix: str = "") -> list[str]:
    """Every dotted key of the params tree (what dvc.yaml's `params:` may name)."""
    keys = []
    for field in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(flat_keys(hint, f"{prefix}{field.name}."))
        else:
            keys.append(f"{prefix}{field.name}")
    return keys
