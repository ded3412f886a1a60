"""Where the models run and in which dtype: the one place that decides, for every stage.

CUDA when a GPU is visible (or demanded with `--device cuda`), else the CPU. On CUDA LLaVA
holds bf16 weights (its training dtype) and trains under bf16 mixed precision, CLIP region
scoring runs in fp16, and GroundingDINO under bf16 autocast (fp16 where the GPU lacks
bf16). On the CPU everything runs in float32, where half precision is slow; 4-bit
(QLoRA) keeps bf16 for its unquantised weights on either device, its compute dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from accelerate import PartialState

from src.params import DEVICE_CHOICES


def resolve_device(choice: str = "auto") -> torch.device:
    """The torch device for a --device choice; "auto" takes CUDA when it is there."""
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"device {choice!r} is not one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda, but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}): use --device cpu or auto")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


class OutOfMemory(RuntimeError):
    """A stage ran out of device memory; the message names the param to lower."""


@contextmanager
def oom_advice(stage: str, advice: str) -> Iterator[None]:
    """Re-raise an out-of-memory error of the block (CUDA's, or any torch device's) as
    OutOfMemory saying which knob to lower: torch's own message names only bytes."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
        raise OutOfMemory(f"{stage} ran out of device memory: {advice} ({first_line})") from error


@contextmanager
def process_group(device: torch.device) -> Iterator[PartialState]:
    """This run's processes (torchrun / accelerate launch, else this one) for the block. Without
    a GPU accelerate joins a multi-process run only when told to use the CPU (gloo). The group
    is torn down on the way out: a process that exits with it up can abort in the backend's
    threads ("terminate called without an active exception")."""
    state = PartialState(cpu=device.type == "cpu")
    try:
        yield state
    finally:
        state.destroy_process_group()


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` intra-op threads, the old count restored after. Results
    shift with the thread count, and oversubscribed threads spin-wait: a busy CPU runs
    the tiny models tens of times slower on 2 threads than on 1."""
    old = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def llava_dtype(device: torch.device, *, load_in_4bit: bool = False) -> torch.dtype:
    """Dtype of LLaVA's (unquantised) weights, for training and generation."""
    return torch.bfloat16 if device.type == "cuda" or load_in_4bit else torch.float32


def mixed_precision(device: torch.device) -> str:
    """accelerate's `mixed_precision` for training on `device`."""
    return "bf16" if device.type == "cuda" else "no"


def clip_dtype(device: torch.device) -> torch.dtype:
    """Dtype of CLIP's weights for region scoring (thresholds absorb fp16 rounding)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def detector_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """GroundingDINO's autocast dtype; None: full precision, no autocast."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
