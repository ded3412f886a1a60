"""Known-harmless library warnings are filtered by message, category and module; others show."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from src.known_warnings import filter_known_warnings

REPO = Path(__file__).resolve().parents[1]
# PeftModel reads a deprecated transformers alias; an lm_head target makes peft save embeddings.
PEFT_ON_TINY_LLAVA = """
import sys, torch
from src.models.llava import load_llava
from src.train.model import LoraSettings, prepare_for_training
model = load_llava(sys.argv[1], 32, dtype=torch.float32)
lora = LoraSettings(r=4, alpha=4, dropout=0.0, target_regex=r".*language_model.*q_proj|lm_head",
                    train_projector=False)
prepare_for_training(model, lora, gradient_checkpointing=False, quantized=False
                     ).save_pretrained(sys.argv[2])
"""


def test_an_entry_point_sees_no_known_warning(tiny_models: dict[str, Path],
                                              tmp_path: Path) -> None:
    """Importing `src` installs the filters before any library loads (pytest resets them)."""
    done = subprocess.run([sys.executable, "-c", PEFT_ON_TINY_LLAVA, str(tiny_models["llava"]),
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert "Warning" not in done.stderr, done.stderr


def test_the_same_message_from_elsewhere_still_shows() -> None:
    with warnings.catch_warnings(record=True) as caught:
        filter_known_warnings()
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning,
                               "peft_model.py", 1, module="transformers.modeling_utils")
        warnings.warn_explicit("`is_gradient_checkpointing` is deprecated", FutureWarning,
                               "model.py", 1, module="src.train.model")
    assert [w.filename for w in caught] == ["model.py"]


def test_bitsandbytes_kernel_hub_notice_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please "
                   "make sure you already `pip install kernels`", "offline")
    logger.warning("another bitsandbytes warning")
    assert [record.getMessage() for record in caplog.records] == ["another bitsandbytes warning"]
