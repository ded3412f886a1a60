"""Activation checkpointing really recomputes layers where it is requested, and only there:
in a prepared model, in the training loop, and in the training benchmark."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from train_fixtures import demo_paths, tiny_config, write_demo_jsonl

from bench.bench_train import bench_row, write_bench_data
from src.models.llava import format_answer, format_prompt, load_llava, load_processor
from src.train.model import LoraSettings, prepare_for_training
from src.train.recipe import finetune
from src.train.recompute import RecomputeCounter

# One torch thread: deterministic, and far faster than two on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")

LM_LAYERS = 2  # the tiny LLaVA's language model; its 2 vision layers are frozen


@pytest.fixture(scope="module")
def train_file(demo_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "train.jsonl"
    write_demo_jsonl(demo_coco, path)
    return path


def _one_backward(llava_dir: Path, gradient_checkpointing: bool) -> tuple[int, dict]:
    """Recomputations in one forward + backward of a freshly prepared model, and its grads."""
    torch.manual_seed(0)
    model = prepare_for_training(
        load_llava(str(llava_dir), 32, dtype=torch.float32),
        LoraSettings(8, 16, 0.0, r".*language_model.*\.(q_proj|v_proj)", train_projector=True),
        gradient_checkpointing=gradient_checkpointing, quantized=False)
    assert all(module.training for module in model.modules())
    processor = load_processor(str(llava_dir), 32)
    inputs = processor(text=[format_prompt("Describe.") + format_answer("a red circle.")],
                       images=[Image.new("RGB", (40, 40), (200, 30, 30))], return_tensors="pt")
    with RecomputeCounter(model) as counter:
        model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    return counter.recomputations, grads


def test_a_prepared_model_recomputes_each_language_layer_once(tiny_models) -> None:
    """No `.train()` by the caller, as a benchmark would forget it; the frozen vision tower
    is neither recomputed nor back-propagated through; the gradients are unchanged."""
    recomputed, grads = _one_backward(tiny_models["llava"], gradient_checkpointing=True)
    plain_recomputed, plain_grads = _one_backward(tiny_models["llava"],
                                                  gradient_checkpointing=False)
    assert recomputed == LM_LAYERS and plain_recomputed == 0
    assert grads.keys() == plain_grads.keys() and any("lora_B" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("gradient_checkpointing", [True, False])
def test_the_training_loop_recomputes_only_when_asked(tiny_models, demo_coco: Path,
                                                      train_file: Path, tmp_path: Path,
                                                      gradient_checkpointing: bool) -> None:
    config = tiny_config(tiny_models["llava"], max_steps=2, batch_size=8, bsz=4, eval_every=2,
                         gradient_checkpointing=gradient_checkpointing)
    metrics = finetune(config, demo_paths(demo_coco, train_file, tmp_path), show_progress=False)
    micro_batches = metrics["steps"] * config.batch_size // config.bsz
    expected = LM_LAYERS * micro_batches if gradient_checkpointing else 0
    assert metrics["layer_recomputations"] == expected


@pytest.mark.parametrize("gradient_checkpointing", [True, False])
def test_the_training_benchmark_runs_the_real_step(tiny_models, tmp_path: Path,
                                                   gradient_checkpointing: bool) -> None:
    coco, bench_file = write_bench_data(tmp_path, num_train=8)
    row = bench_row(tiny_models["llava"], coco, bench_file, tmp_path, bsz=2,
                    quantized=False, image_size=32, steps=2,
                    gradient_checkpointing=gradient_checkpointing)
    assert row["grad_ckpt"] is gradient_checkpointing
    assert row["recomputed_layers_per_micro_batch"] == (LM_LAYERS if gradient_checkpointing
                                                        else 0)
    assert row["tokens_per_s"] > 0 and row["samples_per_s"] > 0
