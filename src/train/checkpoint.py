"""Resumable checkpoints: accelerate's state plus a small JSON of where training stood.

Layout: `<checkpoint_dir>/step-00000500/` holds `accelerator.save_state` (trainable
weights only, optimizer, scheduler, RNG states) and `trainer_state.json`, written last,
so a directory without it is an interrupted save and is ignored. The JSON carries the
run's fingerprint (`src.data.shard_map.fingerprint`: the training code and package
versions, the config without execution knobs, the model's digest, the training file's
bytes, the image root and the processor): checkpoints of another run are never resumed.
The process count and the per-device batch are not in it: the step batches do not depend
on them, and `batches_in_epoch` counts step batches, so a run resumes on another count.

`<checkpoint_dir>/samples/` holds each process's encoded training and validation samples
(`src.train.data.encode_examples`) while the run lives, at a path fixed by the split and the
process index: a killed run's are written over by its rerun.

Checkpoints and samples are resume scratch for a run that has not finished: once the adapter
and the metrics are written, the run's checkpoints and samples are removed (also the samples
a killed run with more processes left). A killed run resumes (from the
final checkpoint, it trains nothing and only writes the outputs); a finished run is never
"resumed", so `dvc repro -f` trains again.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from src.data.atomic import atomic_write_json

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
PREFIX = "step-"
SAMPLES_DIR = "samples"


@dataclass(frozen=True)
class TrainerState:
    step: int  # optimizer steps done
    epoch: int  # the epoch in progress
    batches_in_epoch: int  # step batches of that epoch consumed (skipped on resume)
    fingerprint: str
    skipped: dict[str, list] = field(default_factory=dict)  # skipped example ids, by reason
    samples: int = 0  # captions trained on so far
    train_loss: float | None = None  # the last logged values
    val_loss: float | None = None
    val_loss_initial: float | None = None  # before step 1


def checkpoint_path(checkpoint_dir: Path, step: int) -> Path:
    return Path(checkpoint_dir) / f"{PREFIX}{step:08d}"


def samples_path(checkpoint_dir: Path, split: str, process_index: int) -> Path:
    """Where process `process_index` of a run keeps its encoded `split` samples."""
    return Path(checkpoint_dir) / SAMPLES_DIR / f"{split}-{process_index}.arrow"


def _complete(checkpoint_dir: Path) -> list[tuple[Path, TrainerState]]:
    found = []
    for path in sorted(Path(checkpoint_dir).glob(f"{PREFIX}*")):
        state_path = path / STATE_FILE
        if state_path.is_file():
            found.append((path, TrainerState(**json.loads(state_path.read_text()))))
    return found


def latest_checkpoint(checkpoint_dir: Path,
                      run_fingerprint: str) -> tuple[Path, TrainerState] | None:
    """The newest complete checkpoint of this run, or None."""
    ours = [(path, state) for path, state in _complete(checkpoint_dir)
            if state.fingerprint == run_fingerprint]
    return max(ours, key=lambda item: item[1].step) if ours else None


def remove_other_runs(checkpoint_dir: Path, run_fingerprint: str) -> int:
    """Delete checkpoints (complete or not) that are not this run's; return how many."""
    ours = {path for path, state in _complete(checkpoint_dir)
            if state.fingerprint == run_fingerprint}
    others = [path for path in Path(checkpoint_dir).glob(f"{PREFIX}*") if path not in ours]
    for path in others:
        shutil.rmtree(path)
    if others:
        logger.warning("removed %d checkpoints of another config or training file from %s",
                       len(others), checkpoint_dir)
    return len(others)


def remove_finished_run(checkpoint_dir: Path) -> None:
    """Delete every checkpoint and the samples: the run's outputs are written, so none is
    resume scratch. (A process still mapping its samples file keeps reading it: an unlinked
    file lives until it is closed.)"""
    for path in Path(checkpoint_dir).glob(f"{PREFIX}*"):
        shutil.rmtree(path)
    shutil.rmtree(Path(checkpoint_dir) / SAMPLES_DIR, ignore_errors=True)


def write_trainer_state(path: Path, state: TrainerState) -> None:
    atomic_write_json(path / STATE_FILE, asdict(state))


def prune(checkpoint_dir: Path, keep: int) -> None:
    """Keep the `keep` newest complete checkpoints."""
    complete = sorted(_complete(checkpoint_dir), key=lambda item: item[1].step)
    for path, _ in complete[:-keep]:
        shutil.rmtree(path)


def keep_trainable_weights(models: list[torch.nn.Module], weights: list[dict[str, torch.Tensor]],
                           output_dir: str) -> None:
    """accelerate save-state pre-hook: store only trainable tensors (LoRA, a trained
    projector), not the frozen 7B base. accelerate hands the hook the models as they were
    before DDP wrapped them, so the names carry no `module.` and a run resumes on any process
    count (`Trainer.resume` loads them into the unwrapped model)."""
    for index, model in enumerate(models):
        trainable = {name for name, param in model.named_parameters() if param.requires_grad}
        weights[index] = {name: tensor
                          for name, tensor in weights[index].items() if name in trainable}
