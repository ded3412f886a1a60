"""The fine-tuning recipe of `python -m src.train.finetune_llava` (also the `train` stage).

`finetune()` builds the parts in dependency order (data first: its token lengths size
the batches and the schedule; then the model, optimizer and scheduler; accelerate
prepares them together), resumes from the newest checkpoint of the same run if there is
one, trains, and writes the adapter directory and the metrics.

    accelerate launch --multi_gpu --num_processes 2 -m src.train.finetune_llava ...
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import send_to_device, set_seed
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import ProcessorMixin, get_cosine_schedule_with_warmup

from src.data.atomic import atomic_write_json, remove_stale_temps
from src.data.coco import path_inside
from src.data.jsonl import ExampleReader, special_token_problem
from src.data.shard_map import file_digest, fingerprint, processor_digest
from src.data.skips import Skip, SkipCounter
from src.models.device_policy import llava_dtype, mixed_precision, oom_advice, resolve_device
from src.models.llava import (
    IGNORE_INDEX,
    check_4bit_support,
    image_token_count,
    load_llava,
    load_processor,
    special_token_texts,
)
from src.models.weights import model_identity
from src.params import Params, TrainParams, accumulation_steps, check_prompts
from src.preflight import require_models, require_paths
from src.train.checkpoint import (
    TrainerState,
    keep_trainable_weights,
    latest_checkpoint,
    remove_finished_run,
    remove_other_runs,
    samples_path,
)
from src.train.data import (
    CaptionDataset,
    Collate,
    EncodedSamples,
    Sample,
    encode_examples,
    validation_examples,
)
from src.train.live import LiveMetrics
from src.train.loop import LoopSettings, Trainer
from src.train.model import LoraSettings, parameter_counts, prepare_for_training
from src.train.outputs import check_output_dir, save_adapter_dir
from src.train.sampler import LengthGroupedBatches, MicroBatches

logger = logging.getLogger(__name__)

# Knobs that change how a run executes or reports, never the trained weights: a changed
# value keeps resuming the same checkpoints. `bsz` with them: `batch_size` fixes each step's
# captions, and the per-device batch only sets how many micro-batches carry them.
EXECUTION_KNOBS = ("bsz", "eval_every", "save_every_minutes", "log_every", "num_workers")
# Stood for in the fingerprint by the model's identity (the commit it resolved to): pinning
# the commit a run already loaded keeps resuming its checkpoints.
IDENTIFIED = ("model_revision",)
IMAGE_ROOT_PROBE = 100  # examples whose images must not all be missing at start


@dataclass(frozen=True)
class FinetuneConfig(TrainParams):
    """params.yaml's `train` knobs plus what training needs from the rest of the file."""

    model_id: str
    data_seed: int  # params.yaml's `seed`: which val captions measure the validation loss
    val_prompt: str  # the full-image prompt, for the validation captions
    region_prompt: str  # assemble's, only checked: it reaches the model through the JSONL
    model_revision: str | None = None  # model_id's hub revision (None = main)
    # The seed command's --grad-accum: batch_size becomes bsz x grad_accum x processes.
    grad_accum: int | None = None
    skip_malformed: bool = False  # count and skip malformed JSONL lines and val captions
    drop_bad_masks: bool = False  # count and drop examples whose mask check fails

    @classmethod
    def from_params(cls, params: Params) -> FinetuneConfig:
        """The `train` section (its `seed` drives initialisation, LoRA initialisation, data
        order and dropout) plus model_id at its revision, the data seed and the prompts."""
        return cls(**asdict(params.train), model_id=params.model_id, data_seed=params.seed,
                   val_prompt=params.caption_prompt,
                   region_prompt=params.assemble.region_prompt,
                   model_revision=params.model_revision)

    def prompt_params(self) -> dict[str, str]:
        """The prompts, by their params.yaml keys."""
        return {"caption_prompt": self.val_prompt, "assemble.region_prompt": self.region_prompt}


@dataclass(frozen=True)
class FinetunePaths:
    train_file: Path
    image_root: Path  # JSONL image paths are relative to it
    val_ann: Path  # COCO captions JSON
    val_images: Path  # its images
    output_dir: Path
    checkpoint_dir: Path
    metrics: Path | None = None
    live_dir: Path | None = None


def _check_image_root(samples: EncodedSamples, image_root: Path) -> None:
    probe = [sample.image for sample in samples[:IMAGE_ROOT_PROBE]]
    paths = [path_inside(image_root, relative) for relative in probe]
    if probe and not any(path is not None and path.is_file() for path in paths):
        raise FileNotFoundError(f"none of the first {len(probe)} training images exists under "
                                f"--image-root {image_root} (e.g. {probe[0]})")


def _describe(sample: Sample, tokenizer: object, image_token_id: int) -> str:
    prompt = [t for t, label in zip(sample.input_ids, sample.labels, strict=True)
              if label == IGNORE_INDEX and t != image_token_id]
    target = [label for label in sample.labels if label != IGNORE_INDEX]
    return (f"{sample.example_id}: {len(sample.input_ids)} tokens "
            f"({sample.input_ids.count(image_token_id)} image); masked text "
            f"{tokenizer.decode(prompt)!r} -> target {tokenizer.decode(target)!r}")


def _first_loadable(dataset: CaptionDataset, collate: Collate) -> dict[str, Any]:
    for index in range(len(dataset)):
        item = dataset[index]
        if not isinstance(item, Skip):
            return collate([item])
    raise RuntimeError("no training image could be read")


def _share_cpu_cores(num_processes: int, num_workers: int) -> None:
    """Lower torch's intra-op threads so processes x (threads + workers) fits the cores:
    oversubscribed OpenMP threads spin-wait and can slow training tens of times."""
    budget = max(1, (os.cpu_count() or 1) // num_processes - num_workers)
    if torch.get_num_threads() > budget:
        logger.info("using %d torch threads per process (%d cores, %d processes, %d workers)",
                    budget, os.cpu_count(), num_processes, num_workers)
        torch.set_num_threads(budget)


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class _Data:
    train_samples: EncodedSamples
    val_samples: EncodedSamples
    dropped: SkipCounter  # training examples dropped before training, by reason
    val_dropped: SkipCounter
    malformed: int  # skipped JSONL lines
    batches: MicroBatches
    train_loader: DataLoader
    val_loader: DataLoader
    dummy_batch: dict[str, Any]


def _setup_data(config: FinetuneConfig, paths: FinetunePaths, processor: ProcessorMixin,
                num_processes: int, process_index: int) -> _Data:
    reserved = special_token_texts(processor)
    # The val captions first: a malformed one fails in seconds, not after the training file
    # (minutes at COCO scale) is encoded.
    val_examples, val_malformed = validation_examples(
        paths.val_ann, config.val_examples, config.val_prompt, config.data_seed,
        reserved=reserved, skip_malformed=config.skip_malformed)
    examples = ExampleReader(paths.train_file, skip_malformed=config.skip_malformed,
                             reserved=reserved)
    encode = {"max_length": config.max_length, "drop_bad_masks": config.drop_bad_masks}
    train_samples, dropped = encode_examples(  # streams the file
        examples, processor, table_path=samples_path(paths.checkpoint_dir, "train", process_index),
        **encode)
    malformed = examples.malformed
    if not train_samples:
        raise ValueError(f"{paths.train_file}: no trainable example ({dropped.counts()})")
    _check_image_root(train_samples, paths.image_root)
    val_samples, val_dropped = encode_examples(
        val_examples, processor,
        table_path=samples_path(paths.checkpoint_dir, "val", process_index), **encode)
    val_dropped.update(val_malformed)
    collate = Collate(processor.tokenizer.pad_token_id)
    train_set = CaptionDataset(train_samples, processor, paths.image_root)
    batches = MicroBatches(LengthGroupedBatches(train_set.lengths(), config.batch_size,
                                                config.seed),
                           config.bsz, num_processes, process_index)
    # A private generator: starting an epoch's iterator then draws nothing from the global
    # RNG, so a resumed run's dropout masks match an uninterrupted run's.
    loader_kwargs = {"collate_fn": collate, "num_workers": config.num_workers,
                     "persistent_workers": config.num_workers > 0,
                     "generator": torch.Generator().manual_seed(config.seed)}
    return _Data(
        train_samples, val_samples, dropped, val_dropped, malformed, batches,
        DataLoader(train_set, batch_sampler=batches, **loader_kwargs),
        DataLoader(CaptionDataset(val_samples, processor, paths.val_images),
                   batch_size=config.bsz * num_processes,
                   **loader_kwargs),
        _first_loadable(train_set, collate))


def _setup_model(config: FinetuneConfig, device: torch.device) -> PeftModel:
    quantized = config.load_in_4bit
    model = load_llava(config.model_id, config.image_size,
                       dtype=llava_dtype(device, load_in_4bit=quantized), load_in_4bit=quantized,
                       device_map={"": str(device)} if quantized else None,
                       revision=config.model_revision)
    lora = LoraSettings(config.lora_r, config.lora_alpha, config.lora_dropout,
                        config.lora_target, config.train_projector)
    return prepare_for_training(model, lora, gradient_checkpointing=config.gradient_checkpointing,
                                quantized=quantized)


def _banner(config: FinetuneConfig, data: _Data, processor: ProcessorMixin, num_processes: int,
            total_steps: int, counts: dict[str, tuple[int, int]]) -> None:
    accumulation = data.batches.accumulation
    trainable, total = (sum(c[i] for c in counts.values()) for i in (0, 1))
    logger.info(
        "***** Running training *****\n"
        "  examples %d (dropped %s, %d malformed lines), validation %d (dropped %s)\n"
        "  batch %d x accumulation %d x processes %d = %d captions per step (train.batch_size)\n"
        "  steps %d (%d per epoch), image tokens %d per example\n"
        "  trainable parameters %s of %s: %s",
        len(data.train_samples), data.dropped.counts(), data.malformed, len(data.val_samples),
        data.val_dropped.counts(), config.bsz, accumulation, num_processes, config.batch_size,
        total_steps, len(data.batches.steps), image_token_count(processor),
        f"{trainable:,}", f"{total:,}",
        ", ".join(f"{group} {t:,}/{n:,}" for group, (t, n) in counts.items()))
    for sample in data.train_samples[:2]:
        logger.info("sample %s", _describe(sample, processor.tokenizer, processor.image_token_id))


def finetune(config: FinetuneConfig, paths: FinetunePaths, *,
             show_progress: bool = True) -> dict[str, object]:
    """Train (or resume) and write the adapter dir and metrics; returns the metrics.

    Inputs, the output folder, the base model and 4-bit support are checked first: encoding
    the data takes minutes on a full JSONL, and none of it should run for a model that cannot
    load or an adapter that could not be saved.
    """
    require_paths(paths.train_file, paths.image_root, paths.val_ann, paths.val_images)
    check_output_dir(paths.output_dir)
    if paths.metrics is not None:
        remove_stale_temps(paths.metrics.parent, paths.metrics.name)
    require_models((config.model_id, config.model_revision))
    if config.load_in_4bit:
        check_4bit_support()
    accelerator = Accelerator(
        mixed_precision=mixed_precision(resolve_device()),
        # The training batches are dealt by src.train.sampler.MicroBatches, not by
        # accelerate. split_batches: the validation batches (bsz x processes) are split
        # across processes, and the scheduler steps once per optimizer step.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    if config.grad_accum is not None:
        config = replace(config, grad_accum=None, batch_size=config.bsz
                                     * config.grad_accum * accelerator.num_processes)
    # Before any model loads: a batch size the launch cannot split fails in seconds.
    accelerator.gradient_accumulation_steps = accumulation_steps(
        config.batch_size, config.bsz, accelerator.num_processes)
    set_seed(config.seed)
    if accelerator.device.type == "cpu":
        _share_cpu_cores(accelerator.num_processes, config.num_workers)
    run_config = {**asdict(config), "train_file": str(paths.train_file),
                  "val_ann": str(paths.val_ann)}
    del run_config["grad_accum"]  # resolved into batch_size above

    # Data first: its size sets the schedule. Then model, optimizer, schedule.
    processor = load_processor(config.model_id, config.image_size, config.pad_to_square,
                               revision=config.model_revision)
    check_prompts(config.prompt_params(),
                  partial(special_token_problem, reserved=special_token_texts(processor)))
    data = _setup_data(config, paths, processor, accelerator.num_processes,
                       accelerator.process_index)
    model = _setup_model(config, accelerator.device)
    identity = model_identity(config.model_id, config.model_revision, param="model")
    run_fingerprint = fingerprint(
        code=__name__, params={k: v for k, v in run_config.items()
                               if k not in (*EXECUTION_KNOBS, *IDENTIFIED)},
        model=identity,
        # Not the process count: the step batches and their order do not depend on it, so
        # a run killed on N processes resumes on M (dropout masks are drawn per process).
        inputs={"train_file": file_digest(paths.train_file), "images": str(paths.image_root),
                "processor": processor_digest(processor)})
    counts = parameter_counts(model)
    steps_per_epoch = len(data.batches.steps)
    total_steps = config.max_steps if config.max_steps > 0 else config.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)
    if accelerator.state.deepspeed_plugin is not None:  # it cannot read a batch sampler's size
        accelerator.state.deepspeed_plugin.deepspeed_config.update(
            train_micro_batch_size_per_gpu=config.bsz,
            gradient_accumulation_steps=accelerator.gradient_accumulation_steps)
    model, optimizer, val_loader, scheduler = accelerator.prepare(
        model, optimizer, data.val_loader, scheduler)
    accelerator.register_save_state_pre_hook(keep_trainable_weights)

    # Resume
    if accelerator.is_main_process:
        remove_other_runs(paths.checkpoint_dir, run_fingerprint)
    accelerator.wait_for_everyone()
    found = latest_checkpoint(paths.checkpoint_dir, run_fingerprint)
    live = None
    if paths.live_dir is not None and accelerator.is_main_process:
        live = LiveMetrics(paths.live_dir, found[1].step if found else None)
    settings = LoopSettings(total_steps, config.max_grad_norm, config.eval_every,
                            config.save_every_minutes, config.log_every, paths.checkpoint_dir,
                            run_fingerprint)
    trainer = Trainer(accelerator, model, optimizer, scheduler, data.train_loader, data.batches,
                      val_loader, send_to_device(data.dummy_batch, accelerator.device), settings,
                      live if live is not None else lambda step, metrics: None)
    if found:
        trainer.resume(*found)
    _banner(config, data, processor, accelerator.num_processes, total_steps, counts)

    advice = (f"lower train.bsz (now {config.bsz}; the accumulation rises to keep "
              f"train.batch_size {config.batch_size} captions per step, and the run resumes "
              "from its checkpoints); or set train.gradient_checkpointing=true or "
              "train.load_in_4bit=true")
    with oom_advice("train", advice):  # validation included: it runs at train.bsz too
        result = trainer.train(found[1] if found else TrainerState(0, 0, 0, run_fingerprint),
                               show_progress=show_progress)

    metrics = {
        "loss": _finite_or_none(result.train_loss), "val_loss": _finite_or_none(result.val_loss),
        "val_loss_initial": _finite_or_none(result.val_loss_initial), "steps": result.steps,
        "examples": len(data.train_samples), "val_examples": len(data.val_samples),
        "samples_trained": result.samples,
        "tokens_per_second": _finite_or_none(result.tokens_per_second),
        "layer_recomputations": result.layer_recomputations,
        "skipped_images": result.skipped.total(),
        "skipped": SkipCounter().update(data.dropped, result.skipped).counts(),
        "skipped_val": data.val_dropped.counts(),
        "malformed_lines": data.malformed, "trainable_params": sum(t for t, _ in counts.values()),
        "resumed_from_step": found[1].step if found else 0,
        "processes": accelerator.num_processes,
        "model": identity,  # the base weights trained on: a hub commit or a folder digest
    }
    state_dict = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        save_adapter_dir(paths.output_dir, accelerator.unwrap_model(model), state_dict,
                         processor, run_config, metrics)
        if paths.metrics is not None:
            atomic_write_json(paths.metrics, metrics)
        remove_finished_run(paths.checkpoint_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return metrics
