"""One device/dtype policy: CUDA when present, bf16/fp16 there, float32 on the CPU."""

from __future__ import annotations

import pytest
import torch

from src.models.device_policy import (
    clip_dtype,
    detector_autocast_dtype,
    llava_dtype,
    mixed_precision,
    resolve_device,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("choice", "cuda", "expected"), [
    ("auto", True, "cuda"), ("auto", False, "cpu"), ("cpu", True, "cpu"), ("cpu", False, "cpu"),
    ("cuda", True, "cuda"),
])
def test_resolve_device(monkeypatch: pytest.MonkeyPatch, choice: str, cuda: bool,
                        expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_device(choice) == torch.device(expected)


def test_cuda_without_a_gpu_and_unknown_choices_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="--device cuda, but torch sees no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="'gpu' is not one of auto, cpu, cuda"):
        resolve_device("gpu")


def test_dtypes_per_device() -> None:
    assert (llava_dtype(CUDA), llava_dtype(CPU)) == (torch.bfloat16, torch.float32)
    assert llava_dtype(CPU, load_in_4bit=True) == torch.bfloat16  # QLoRA's compute dtype
    assert (mixed_precision(CUDA), mixed_precision(CPU)) == ("bf16", "no")
    assert (clip_dtype(CUDA), clip_dtype(CPU)) == (torch.float16, torch.float32)


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_detector_autocast(monkeypatch: pytest.MonkeyPatch, bf16: bool,
                           expected: torch.dtype) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16)
    assert detector_autocast_dtype(CUDA) == expected
    assert detector_autocast_dtype(CPU) is None
