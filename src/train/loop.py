"""The training loop: accelerate gradient accumulation, validation, checkpoints, resume.

An optimizer step trains on one step batch (`train.batch_size` captions, all processes;
`src.train.sampler`), which each process reads as `accumulation` micro-batches. A
checkpoint is taken at a step boundary and records the step batches consumed, so a
resumed run, on any process count or per-device batch, continues with the same batches,
optimizer, scheduler and RNG states: it ends where an uninterrupted run ends, up to float
rounding. Checkpoints are spaced in minutes of work (`train.save_every_minutes`, by the main
process's clock, its decision shared with every process), and the final step is saved too.

The loss of a step is the mean over the step's captions of each caption's mean token loss
(a short region caption weighs as much as a long one). Each micro-batch back-propagates
its captions' summed loss times `processes x accumulation / captions in the step`, which
cancels DDP's mean over processes and accelerate's division by the accumulation: the
gradient is that of the whole step batch at once, however it is split, a short last step
and unreadable images included.

A step whose loss or updated weights are not finite stops training (NonFiniteError)
before anything of it is saved: the checkpoints on disk are of finite steps only, and no
NaN adapter is written.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from tqdm import tqdm

from src.data.skips import SkipCounter
from src.models.llava import IGNORE_INDEX
from src.train.checkpoint import TrainerState, checkpoint_path, prune, write_trainer_state
from src.train.recompute import RecomputeCounter
from src.train.sampler import MicroBatches

logger = logging.getLogger(__name__)

KEEP_CHECKPOINTS = 2  # older ones are deleted; the newest may be mid-write when killed
# Seconds, for the checkpoint spacing; read on the main process only (tests replace it).
clock = time.monotonic
MODEL_INPUTS = ("input_ids", "attention_mask", "pixel_values")
MetricsSink = Callable[[int, dict[str, float]], None]


class NonFiniteError(FloatingPointError):
    """A training step gave a non-finite loss or weights; names the step and the loss."""


@dataclass(frozen=True)
class LoopSettings:
    total_steps: int
    max_grad_norm: float
    eval_every: int
    save_every_minutes: float  # of work between checkpoints, by the main process's clock
    log_every: int
    checkpoint_dir: Path
    fingerprint: str


@dataclass
class LoopResult:
    steps: int = 0
    train_loss: float = math.nan  # mean over the last log window
    val_loss: float = math.nan  # at the last step
    val_loss_initial: float = math.nan  # before the first step
    samples: int = 0  # captions trained on, all processes, the whole run
    tokens_per_second: float = math.nan  # non-pad tokens, all processes, since (re)start
    skipped: SkipCounter = field(default_factory=SkipCounter)  # image skips, all processes
    # Layers re-run by activation checkpointing, all processes, since (re)start: one per
    # checkpointed layer per micro-batch when it is on, 0 when it is off.
    layer_recomputations: int = 0


@dataclass
class _Window:
    """What happened since the last log line (this process)."""

    losses: list[float] = field(default_factory=list)  # one per optimizer step, all processes
    micro_losses: list[torch.Tensor] = field(default_factory=list)  # summed, of the current step
    # A caption's loss weight in the current step: processes x accumulation / its captions.
    weight: float = 0.0
    tokens: int = 0
    samples: int = 0
    start: float = field(default_factory=time.perf_counter)


def _nan_if_none(value: float | None) -> float:
    return math.nan if value is None else value


def caption_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: the mean next-token cross-entropy over its supervised tokens (labels unshifted)."""
    targets = labels[:, 1:]
    token_losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
        reduction="none")
    return token_losses.sum(dim=1) / (targets != IGNORE_INDEX).sum(dim=1)


def logits_needed(labels: torch.Tensor) -> int:
    """How many last positions' logits `caption_losses` reads: from the one before the
    batch's earliest supervised label to the end. The image and prompt tokens before it,
    most of a LLaVA sequence, then cost no projection onto the vocabulary."""
    first = int((labels != IGNORE_INDEX).int().argmax(dim=1).min())
    return min(labels.shape[1], labels.shape[1] - first + 1)


def batch_caption_losses(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """`caption_losses` of a collated batch, computing logits only where they are read."""
    keep = logits_needed(batch["labels"])
    logits = model(**{key: batch[key] for key in MODEL_INPUTS}, logits_to_keep=keep).logits
    return caption_losses(logits, batch["labels"][:, -keep:])


class Trainer:
    """Owns one run's prepared objects; `train()` runs it from a state (fresh or resumed)."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any,
                 train_loader: Any, batches: MicroBatches, val_loader: Any,
                 dummy_batch: dict[str, torch.Tensor], settings: LoopSettings,
                 log_metrics: MetricsSink) -> None:
        self.accelerator = accelerator
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.train_loader = train_loader
        self.batches = batches
        self.val_loader = val_loader
        # Run instead of a batch whose images were all unreadable (its loss times 0), so
        # every process makes the same forward/backward calls (DDP/FSDP collectives).
        self.dummy_batch = dummy_batch
        self.settings = settings
        self.log_metrics = log_metrics
        self.steps_per_epoch = len(batches.steps)
        self.num_epochs = math.ceil(settings.total_steps / self.steps_per_epoch)

    def resume(self, path: Path, state: TrainerState) -> None:
        """Load a checkpoint's accelerate state, checking every trainable tensor came back.
        (FSDP and DeepSpeed write their own sharded whole-model checkpoints instead.)"""
        weights = path / "model.safetensors"
        if not weights.is_file():
            self.accelerator.load_state(str(path))
        else:
            # Optimizer, scheduler and RNG states; the trainable tensors are stored under the
            # unwrapped model's names (`keep_trainable_weights`) and loaded into it here.
            self.accelerator.load_state(str(path), strict=False)
            model = self.accelerator.unwrap_model(self.model)
            trainable = {n for n, p in model.named_parameters() if p.requires_grad}
            saved = load_file(weights)  # load_state_dict copies onto the device
            if saved.keys() != trainable:
                raise RuntimeError(f"checkpoint {path} holds {len(saved)} tensors, the model "
                                   f"has {len(trainable)} trainable ones (e.g. "
                                   f"{sorted(saved.keys() ^ trainable)[0]}): not this run's")
            model.load_state_dict(saved, strict=False)
        logger.info("resumed from %s: step %d, epoch %d, %d steps into it", path, state.step,
                    state.epoch, state.batches_in_epoch)

    def _losses(self, batch: dict[str, Any]) -> torch.Tensor:
        """Caption losses of the batch's rows (of the dummy batch when it has none)."""
        return batch_caption_losses(self.model, batch if "input_ids" in batch
                                    else self.dummy_batch)

    @torch.no_grad()
    def validate(self) -> float:
        """Mean caption loss over the validation set, all processes."""
        self.model.eval()
        total, count = 0.0, 0
        for batch in self.val_loader:
            losses = self._losses(batch)
            kept = batch["kept"]
            per_item = torch.zeros(len(kept), device=kept.device)
            if "input_ids" in batch:
                per_item[kept] = losses
            per_item, kept = self.accelerator.gather_for_metrics((per_item, kept))
            total += per_item[kept].sum().item()
            count += int(kept.sum())
        self.model.train()
        return total / count if count else math.nan

    def _reduce_sum(self, value: int) -> int:
        return int(self.accelerator.reduce(torch.tensor(value, device=self.accelerator.device),
                                           reduction="sum"))

    def _save(self, state: TrainerState) -> None:
        path = checkpoint_path(self.settings.checkpoint_dir, state.step)
        self.accelerator.save_state(str(path))
        if self.accelerator.is_main_process:
            write_trainer_state(path, state)
            prune(self.settings.checkpoint_dir, KEEP_CHECKPOINTS)
        self.accelerator.wait_for_everyone()

    def _save_due(self, last_save: float) -> bool:
        """Whether `save_every_minutes` have passed since `last_save` by the main process's
        clock; every process gets the main process's answer, so all save at the same step."""
        minutes = self.settings.save_every_minutes
        if minutes == 0:
            return True
        due = self.accelerator.is_main_process and clock() - last_save >= 60 * minutes
        flag = torch.tensor(float(due), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum") > 0)

    def _epoch_steps(self, epoch: int,
                     skip: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """(step batches of the epoch consumed so far, this process's micro-batches of the
        next one, on the device), the first `skip` step batches left out unread."""
        self.batches.use_epoch(epoch, skip)
        micro_batches = iter(self.train_loader)
        device = self.accelerator.device
        for consumed in range(skip + 1, self.steps_per_epoch + 1):
            yield consumed, [{key: value.to(device) if torch.is_tensor(value) else value
                              for key, value in next(micro_batches).items()}
                             for _ in range(self.batches.accumulation)]

    def _micro_step(self, batch: dict[str, Any], window: _Window) -> None:
        with self.accelerator.accumulate(self.model):
            loss = self._losses(batch).sum()
            if "input_ids" not in batch:
                loss = loss * 0.0
            self.accelerator.backward(loss * window.weight)
            if self.accelerator.sync_gradients and self.settings.max_grad_norm > 0:
                self.accelerator.clip_grad_norm_(self.model.parameters(),
                                                 self.settings.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad()
        if "input_ids" in batch:
            window.micro_losses.append(loss.detach())
            window.tokens += int(batch["attention_mask"].sum())
            window.samples += len(batch["input_ids"])

    def _step(self, step: int, micro_batches: list[dict[str, Any]],
              window: _Window) -> float | None:
        """Train on one step batch; return its loss (None: all its images were unreadable)."""
        captions = self._reduce_sum(sum(int(batch["kept"].sum()) for batch in micro_batches))
        scale = self.accelerator.num_processes * self.batches.accumulation
        window.weight = scale / captions if captions else 0.0
        for batch in micro_batches:
            self._micro_step(batch, window)
        loss_sum = torch.stack(window.micro_losses).sum() if window.micro_losses else None
        window.micro_losses = []
        return self._check_finite(step, loss_sum, captions)

    def _check_finite(self, step: int, loss_sum: torch.Tensor | None,
                      captions: int) -> float | None:
        """The step's mean caption loss over all processes (None without captions). Raise
        NonFiniteError, on every process alike, when it or any trainable weight after the
        step's update is not finite."""
        device = self.accelerator.device
        weights_ok = torch.stack([p.isfinite().all() for p in self.model.parameters()
                                  if p.requires_grad]).all()
        flags = torch.stack([torch.tensor(0.0, device=device) if loss_sum is None
                             else loss_sum.float().to(device), (~weights_ok).float().to(device)])
        total, bad_weights = self.accelerator.reduce(flags, reduction="sum").tolist()
        loss = total / captions if captions else None
        if not math.isfinite(total) or bad_weights:
            weights = ", weights not finite after its update" if bad_weights else ""
            shown = "n/a" if loss is None else f"{loss:.4g}"
            raise NonFiniteError(
                f"step {step}: training loss {shown} (mean over the step's {captions} "
                f"captions){weights}; stopped without saving this step: the checkpoints in "
                f"{self.settings.checkpoint_dir} hold only earlier, finite steps. Lower "
                "train.lr or check the data")
        return loss

    def _log(self, step: int, window: _Window) -> float:
        """Log the window's mean loss, lr and throughputs; return the loss."""
        loss = sum(window.losses) / len(window.losses) if window.losses else math.nan
        seconds = time.perf_counter() - window.start
        self.log_metrics(step, {"loss": loss, "lr": self.scheduler.get_last_lr()[0],
                                "tokens_per_second": self._reduce_sum(window.tokens) / seconds,
                                "samples_per_second": self._reduce_sum(window.samples) / seconds})
        return loss

    def train(self, state: TrainerState, *, show_progress: bool) -> LoopResult:
        """Train from `state` (step 0 for a fresh run) to `total_steps`."""
        settings, accelerator = self.settings, self.accelerator
        result = LoopResult(steps=state.step, train_loss=_nan_if_none(state.train_loss),
                            val_loss=_nan_if_none(state.val_loss),
                            val_loss_initial=_nan_if_none(state.val_loss_initial))
        # Counts before a checkpoint are totals over processes: carry them on main only.
        carried = accelerator.is_main_process
        skipped = SkipCounter(state.skipped if carried else {})
        samples = state.samples if carried else 0
        last_save = clock()
        if state.step == 0:
            result.val_loss_initial = self.validate()
            self.log_metrics(0, {"val_loss": result.val_loss_initial})
        run_start, run_tokens, window = time.perf_counter(), 0, _Window()
        bar = tqdm(total=settings.total_steps, initial=state.step, desc="train", unit="step",
                   disable=not (show_progress and accelerator.is_local_main_process))
        self.model.train()
        with RecomputeCounter(self.model) as recompute:
            for epoch in range(state.epoch, self.num_epochs):
                if result.steps >= settings.total_steps:  # e.g. resumed from the final checkpoint
                    break
                skip = state.batches_in_epoch if epoch == state.epoch else 0
                for consumed, micro_batches in self._epoch_steps(epoch, skip):
                    for batch in micro_batches:
                        for skip in batch["skipped"]:
                            skipped.add(skip)
                        samples += int(batch["kept"].sum())
                    result.steps += 1
                    step = result.steps
                    step_loss = self._step(step, micro_batches, window)
                    bar.update(1)
                    if step_loss is not None:
                        window.losses.append(step_loss)
                    last = step == settings.total_steps
                    if step % settings.log_every == 0 or last:
                        result.train_loss = self._log(step, window)
                        bar.set_postfix(loss=f"{result.train_loss:.4f}")
                        run_tokens += window.tokens
                        window = _Window()
                    if step % settings.eval_every == 0 or last:
                        result.val_loss = self.validate()
                        self.log_metrics(step, {"val_loss": result.val_loss})
                    if last or self._save_due(last_save):
                        done = consumed == self.steps_per_epoch
                        self._save(TrainerState(
                            step, epoch + done, 0 if done else consumed, settings.fingerprint,
                            skipped.gathered().ids, self._reduce_sum(samples),
                            result.train_loss, result.val_loss, result.val_loss_initial))
                        last_save = clock()  # a save is not work a kill would lose
                    if last:
                        break
        bar.close()
        result.skipped = skipped.gathered()
        result.samples = self._reduce_sum(samples)
        if result.steps > state.step:  # else resumed at the final step: throughput stays NaN
            seconds = time.perf_counter() - run_start
            result.tokens_per_second = self._reduce_sum(run_tokens) / seconds
        result.layer_recomputations = self._reduce_sum(recompute.recomputations)
        return result
