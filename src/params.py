"""params.yaml parsed into frozen dataclasses and validated, so a bad value fails at start.

Every field carries its constraint beside it (`_in`, `_positive`, ...), checked by
`validate` with the dotted key, the value and the reason in the error; every float must
also be finite and every `seed` (any section's) within numpy's range. Entry points load
params before importing torch, so a bad value fails in about a second, before any model
loads. Seed commands apply their flags with `override`, which validates again.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

# A float as people write it; PyYAML reads `1e-4` (no dot) as a string, not a float.
FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
# numpy's legacy seeding (`np.random.seed`, called by accelerate's `set_seed`) takes
# 0 <= seed < 2**32; torch and `random` take more.
SEED_LIMIT = 2**32


# What a --device flag accepts; here, not in src/models/device_policy.py, so that a command
# can offer them before it imports torch.
DEVICE_CHOICES = ("auto", "cpu", "cuda")


class ParamsError(ValueError):
    """A params value that cannot be used: names the key, the value and why."""


@dataclass(frozen=True)
class Rule:
    """A field's constraint: `test(value)` holds for a usable value; `reason` says what it must
    be (and why, where that is not obvious)."""

    test: Callable[[typing.Any], bool]
    reason: str


def _rule(test: Callable[[typing.Any], bool], reason: str) -> typing.Any:
    return field(metadata={"rule": Rule(test, reason)})


def _in(low: float, high: float, why: str = "") -> typing.Any:
    return _rule(lambda v: low <= v <= high, f"must be in [{low}, {high}]{why}")


def _positive(why: str = "") -> typing.Any:
    return _rule(lambda v: v > 0, f"must be > 0{why}")


def _at_least_zero(why: str = "") -> typing.Any:
    return _rule(lambda v: v >= 0, f"must be >= 0{why}")


def _one_of(*choices: str) -> typing.Any:
    return _rule(lambda v: v in choices, f"must be one of {', '.join(choices)}")


def _non_empty() -> typing.Any:
    return _rule(lambda v: bool(v.strip()), "must not be empty")


def _revision() -> typing.Any:
    return _rule(lambda v: v is None or bool(v.strip()),
                 "must be a branch, tag or commit of the hub repository, or null for its "
                 "main branch")


def _compiles(text: str) -> bool:
    try:
        re.compile(text)
    except re.error:
        return False
    return True


@dataclass(frozen=True)
class DemoParams:
    num_train: int = _positive()
    num_val: int = _positive()


@dataclass(frozen=True)
class PhrasesParams:
    spacy_model: str = _non_empty()
    max_phrases_per_image: int = _positive()
    max_phrase_words: int = _positive()


@dataclass(frozen=True)
class DetectParams:
    floor_score: float = _in(0, 1)  # and at most box/text thresholds: see CROSS_RULES
    batch_size: int = _positive()
    num_workers: int = _at_least_zero(" (0 = decode in the main process)")
    shard_size: int = _positive()


@dataclass(frozen=True)
class ClipScoreParams:
    min_box_frac: float = _in(0, 1)
    crop_pad_frac: float = _at_least_zero()
    caption_template: str = _rule(lambda v: "{phrase}" in v, "must contain {phrase}")
    batch_size: int = _positive()
    num_workers: int = _at_least_zero(" (0 = crop in the main process)")
    shard_size: int = _positive()


@dataclass(frozen=True)
class AssembleParams:
    nms_iou: float = _in(0, 1, " (1.0 disables NMS)")
    region_prompt: str = _non_empty()
    region_format: str = _one_of("crop", "box")
    max_region_ratio: float = _at_least_zero()
    gallery_images: int = _at_least_zero()


@dataclass(frozen=True)
class TrainParams:
    seed: int = _at_least_zero(" (training only; `seed` chooses the data)")
    epochs: int = _positive()
    max_steps: int = _at_least_zero(" (0 = train for `epochs`)")
    batch_size: int = _positive(" (captions per optimizer step, all processes)")
    bsz: int = _positive(" (captions per forward on one device)")
    lr: float = _positive()
    weight_decay: float = _at_least_zero()
    warmup_ratio: float = _in(0, 1)
    max_grad_norm: float = _positive()
    image_size: int = _positive()
    pad_to_square: bool
    load_in_4bit: bool
    gradient_checkpointing: bool
    lora_r: int = _positive(" (the LoRA rank)")
    lora_alpha: int = _positive()
    lora_dropout: float = _rule(lambda v: 0 <= v < 1, "must be in [0, 1)")
    lora_target: str = _rule(_compiles, "must be a valid regular expression (Python re)")
    train_projector: bool
    max_length: int = _positive()
    val_examples: int = _at_least_zero(" (0 = every val image)")
    eval_every: int = _positive()
    save_every_minutes: float = _at_least_zero(" (0 = after every step)")
    log_every: int = _positive()
    num_workers: int = _at_least_zero(" (0 = decode in the main process)")


@dataclass(frozen=True)
class EvaluateParams:
    num_examples: int = _at_least_zero(" (0 = every val image)")
    batch_size: int = _positive()
    max_new_tokens: int = _positive()
    num_beams: int = _positive(" (1 = greedy)")
    baseline: bool
    meteor: bool
    gallery_images: int = _at_least_zero()
    num_workers: int = _at_least_zero(" (0 = decode in the main process)")


@dataclass(frozen=True)
class WeightsParams:
    """The path dvc.yaml depends on for each model: its directory, or a constant stand-in
    for a hub id (DVC cannot hash a hub repository)."""

    detector: str = _non_empty()
    clip_model: str = _non_empty()
    model: str = _non_empty()


@dataclass(frozen=True)
class LaunchParams:
    num_processes: int = _positive()
    config_file: str = _rule(lambda v: True, "")  # "" = accelerate's default config


@dataclass(frozen=True)
class Params:
    profile: str = _one_of("coco", "demo")
    seed: int = _at_least_zero()
    demo: DemoParams
    detector_id: str = _non_empty()
    clip_model_id: str = _non_empty()
    model_id: str = _non_empty()
    # The hub revision of each model id: a commit pins it (null = the main branch, as cached).
    detector_revision: str | None = _revision()
    clip_model_revision: str | None = _revision()
    model_revision: str | None = _revision()
    weights: WeightsParams
    caption_prompt: str = _non_empty()
    max_images: int = _at_least_zero(" (0 = all)")
    box_threshold: float = _in(0, 1)
    text_threshold: float = _in(0, 1)
    clip_threshold: float = _in(-1, 1, " (a cosine similarity)")
    phrases: PhrasesParams
    detect: DetectParams
    clip_score: ClipScoreParams
    assemble: AssembleParams
    train: TrainParams
    evaluate: EvaluateParams
    launch: LaunchParams


def accumulation_steps(batch_size: int, bsz: int, num_processes: int) -> int:
    """Micro-batches each process accumulates per optimizer step: `train.batch_size` (the
    global batch, a hyperparameter) over `train.bsz` (the per-device batch, an execution
    knob) x processes. Raises ParamsError naming the three numbers unless it divides."""
    per_round = bsz * num_processes
    if batch_size % per_round:
        raise ParamsError(
            f"train.batch_size={batch_size} is not a multiple of train.bsz={bsz} x "
            f"{num_processes} processes = {per_round}: an optimizer step is whole rounds of "
            "one micro-batch per process. Choose train.bsz and the process count so that "
            "their product divides train.batch_size")
    return batch_size // per_round


def _floor_below_thresholds(params: Params) -> str | None:
    floor = params.detect.floor_score
    if floor <= min(params.box_threshold, params.text_threshold):
        return None
    return (f"must not exceed box_threshold ({params.box_threshold}) or text_threshold "
            f"({params.text_threshold}): the detect stage caches only candidates scoring at "
            "least the floor, so a threshold under it would silently return fewer boxes than "
            "re-running the detector would")


def _box_placeholder_matches_format(params: Params) -> str | None:
    settings = params.assemble
    if (settings.region_format == "box") == ("{box}" in settings.region_prompt):
        return None
    return ("must contain {box} exactly when assemble.region_format is 'box' (e.g. 'Describe "
            "the region {box} in one short phrase.'), where the normalised [x0, y0, x1, y1] "
            "box is written")


def _revision_needs_hub_id(model: str) -> Callable[[Params], str | None]:
    def check(params: Params) -> str | None:
        model_id = getattr(params, f"{model}_id")
        if getattr(params, f"{model}_revision") is None or not Path(model_id).is_dir():
            return None
        return (f"must be null: {model}_id {model_id!r} is a local directory, identified by "
                "a digest of its files; a revision names a commit of a hub repository")
    return check


# Constraints between fields: (the key named in the error, a check returning the reason).
CROSS_RULES: tuple[tuple[str, Callable[[Params], str | None]], ...] = (
    ("detect.floor_score", _floor_below_thresholds),
    ("assemble.region_prompt", _box_placeholder_matches_format),
    *((f"{model}_revision", _revision_needs_hub_id(model))
      for model in ("detector", "clip_model", "model")),
)


def _lookup(params: object, key: str) -> object:
    for name in key.split("."):
        params = getattr(params, name)
    return params


def _error(source: str, key: str, value: object, reason: str) -> ParamsError:
    return ParamsError(f"{source}: {key}={value!r}: {reason}")


def _optional(hint: object) -> type | None:
    """`T` for a field typed `T | None` (null allowed), else None."""
    args = typing.get_args(hint)
    if len(args) == 2 and type(None) in args:
        return next(arg for arg in args if arg is not type(None))
    return None


def _convert(hint: type, value: object, source: str, key: str) -> object:
    """`value` as the field's type: ints for floats and float text (`1e-4`) are accepted;
    None where the field is `T | None`."""
    if (inner := _optional(hint)) is not None:
        return None if value is None else _convert(inner, value, source, key)
    if hint is float and isinstance(value, str) and FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise _error(source, key, value, f"expected {hint.__name__}")
    return value


def _build(cls: type, raw: object, source: str, prefix: str = "") -> object:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: {where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(hints))
    missing = sorted(set(hints) - set(raw))
    if unknown or missing:
        raise ParamsError(f"{source}: {where}: unknown keys {unknown}, missing keys {missing}")
    values = {}
    for name, hint in hints.items():
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], source, f"{prefix}{name}.")
        else:
            values[name] = _convert(hint, raw[name], source, f"{prefix}{name}")
    return cls(**values)


def _generic_reason(name: str, value: object) -> str | None:
    """Rules for every field, whatever its own rule: floats are finite (YAML's `.inf` and
    `.nan` are floats, and pass `> 0`); any `seed` is within numpy's range."""
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if name == "seed" and isinstance(value, int) and not 0 <= value < SEED_LIMIT:
        return f"must be in [0, {SEED_LIMIT - 1}] (numpy's seed range)"
    return None


def _field_errors(node: object, source: str, prefix: str = "") -> list[ParamsError]:
    errors = []
    for spec in dataclasses.fields(node):
        value = getattr(node, spec.name)
        if dataclasses.is_dataclass(value):
            errors += _field_errors(value, source, f"{prefix}{spec.name}.")
        elif (reason := _generic_reason(spec.name, value)) is not None:
            errors.append(_error(source, f"{prefix}{spec.name}", value, reason))
        elif "rule" in spec.metadata and not spec.metadata["rule"].test(value):
            errors.append(_error(source, f"{prefix}{spec.name}", value,
                                 spec.metadata["rule"].reason))
    return errors


def validate(params: Params, source: str) -> Params:
    """`params` unchanged, or a ParamsError listing every bad value (`source` names where the
    values came from: the file, or the command line)."""
    errors = _field_errors(params, source)
    if not errors:  # cross-field reasons quote fields that must be valid themselves
        for key, check in CROSS_RULES:
            reason = check(params)
            if reason is not None:
                errors.append(_error(source, key, _lookup(params, key), reason))
    if errors:
        raise ParamsError("\n".join(str(error) for error in errors))
    return params


def check_prompts(prompts: Mapping[str, str], problem: Callable[[str], str | None],
                  source: str = "params") -> None:
    """Raise ParamsError naming each prompt param (dotted key -> its text) whose text
    `problem` faults. For rules `validate` cannot apply at start: which texts a tokenizer
    reads as special tokens (`src.data.jsonl.special_token_problem`) is known only once a
    command has loaded the processor; it checks then, before the model loads."""
    errors = [_error(source, key, text, reason) for key, text in prompts.items()
              if (reason := problem(text)) is not None]
    if errors:
        raise ParamsError("\n".join(str(error) for error in errors))


def load_params(path: Path = Path("params.yaml")) -> Params:
    """params.yaml, type-checked and validated."""
    with open(path, encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    return validate(_build(Params, raw, str(path)), str(path))


def param_type(key: str) -> type:
    """The type of a dotted key's value, e.g. float for "train.lr" (for argparse); `T` for a
    `T | None` field."""
    cls: type = Params
    for name in key.split("."):
        cls = typing.get_type_hints(cls)[name]
    return _optional(cls) or cls


def override(params: Params, values: Mapping[str, object],
             source: str = "command line") -> Params:
    """`params` with each dotted key's value in place (None = not given), validated again.

    The one way seed commands put their flags over params.yaml, e.g.
    `override(params, {"box_threshold": args.box_threshold, "detect.batch_size": 8})`.
    """
    for key, value in values.items():
        if value is None:
            continue
        if key not in flat_keys():
            raise ParamsError(f"{source}: unknown param {key!r}")
        params = _replace(params, key.split("."),
                          _convert(param_type(key), value, source, key))
    return validate(params, source)


def _replace(node: typing.Any, names: list[str], value: object) -> typing.Any:
    head, *rest = names
    new = _replace(getattr(node, head), rest, value) if rest else value
    return dataclasses.replace(node, **{head: new})


def flat_keys(cls: type = Params, prefix: str = "") -> list[str]:
    """Every dotted key of the params tree (what dvc.yaml's `params:` may name)."""
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            keys.extend(flat_keys(hint, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys
