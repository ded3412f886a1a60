"""Shared fixtures: the demo dataset, the real COCO slice, and built tiny models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from src.demo.synthetic_coco import write_demo
from src.demo.tiny import build_tiny_models
from src.models.device_policy import torch_threads

REPO = Path(__file__).resolve().parents[1]
COCO_MINI = REPO.parent / "shared" / "coco-mini"


@pytest.fixture(scope="session")
def demo_coco(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic COCO-2017 layout (24 train, 8 val images)."""
    root = tmp_path_factory.mktemp("demo_coco")
    write_demo(root, num_train=24, num_val=8, seed=0)
    return root


@pytest.fixture(scope="session")
def coco_mini() -> Path:
    if not (COCO_MINI / "annotations").is_dir():
        pytest.skip(f"{COCO_MINI} not present")
    return COCO_MINI


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight checkpoints, built once: {"grounding-dino", "clip", "llava"} -> dir."""
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"), seed=0)


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    with torch_threads(1):
        yield
