"""The seed command on a demo JSONL, and 2-process `accelerate launch`es on the CPU (DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import REPO, write_demo_jsonl
from transformers import AutoProcessor

from src.data.jsonl import read_examples, write_examples
from src.models.llava import processor_image_size
from src.train import finetune_llava, loop, recipe
from src.train.model import prepare_for_training

# One torch thread: deterministic, and far faster than two on a busy 2-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def train_file(demo_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("launch") / "train.jsonl"
    write_demo_jsonl(demo_coco, path)
    return path


def _seed_args(demo_coco: Path, train_file: Path, out: Path, llava: Path) -> list[str]:
    """The seed's command line; the rest comes from the repo's params.yaml."""
    return ["--train-file", str(train_file),
            "--val-ann", str(demo_coco / "annotations" / "captions_val2017.json"),
            "--val-images", str(demo_coco / "val2017"), "--output-dir", str(out / "lora"),
            "--model-id", str(llava), "--epochs", "1", "--bsz", "4", "--grad-accum", "2",
            "--lr", "1e-3", "--max-steps", "3", "--metrics", str(out / "train.json"),
            "--params", str(REPO / "params.yaml"), "--num-workers", "0"]


def test_seed_command_trains_at_an_interpolated_image_size(
        tiny_models, demo_coco: Path, train_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """--image-size 48 on the 32-px tiny tower; --image-root defaults to the COCO root.
    --load-in-4bit: the model the recipe trains holds nf4 weights in the language model."""
    import bitsandbytes as bnb

    trained = []

    def keep_model(*args, **kwargs):
        trained.append(prepare_for_training(*args, **kwargs))
        return trained[-1]

    monkeypatch.setattr(recipe, "prepare_for_training", keep_model)
    finetune_llava.main([*_seed_args(demo_coco, train_file, tmp_path, tiny_models["llava"]),
                         "--image-size", "48", "--load-in-4bit"])
    (model,) = trained
    quantized = [name for name, module in model.named_modules()
                 if isinstance(module, bnb.nn.Linear4bit)]
    # 7 projections in each of the 2 Llama layers; vision tower, projector and lm_head kept.
    assert len(quantized) == 14 and all(".language_model.layers." in name for name in quantized)
    assert {module.weight.quant_type for module in model.modules()
            if isinstance(module, bnb.nn.Linear4bit)} == {"nf4"}
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["steps"] == 3 and metrics["samples_trained"] == 24
    assert metrics["val_loss"] < metrics["val_loss_initial"]
    processor = AutoProcessor.from_pretrained(tmp_path / "lora")
    assert processor_image_size(processor) == 48
    config = json.loads((tmp_path / "lora" / "train_config.json").read_text())
    assert config["image_size"] == 48 and config["load_in_4bit"] and config["lr"] == 1e-3
    # Checkpoints went beside the adapter, and the finished run removed them.
    assert [*(tmp_path / "lora-checkpoints").iterdir()] == []


@pytest.fixture(scope="module")
def eleven(train_file: Path) -> Path:
    """11 examples: at train.batch_size 4, each epoch ends with a short step of 3."""
    examples, _ = read_examples(train_file)
    path = train_file.with_name("eleven.jsonl")
    write_examples(path, examples[:11])
    return path


def _two_processes(args: list[str], kill_at: int = 0) -> None:
    """The seed command on 2 gloo processes; killed at micro-step `kill_at` (> 0) on both."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO)}
    command = (["-m", "src.train.finetune_llava"] if not kill_at else
               [str(REPO / "tests" / "killed_training.py"), str(kill_at)])
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                    "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                    "--dynamo_backend", "no", *command, *args],
                   cwd=REPO, env=env, check=True, timeout=300)


def test_the_batch_size_not_the_launch_decides_the_adapter(
        tiny_models, demo_coco: Path, eleven: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """train.batch_size 4 as bsz 4 on 1 process, bsz 2 x accumulation 2 on 1 (the seed's
    --grad-accum) and bsz 2 on 2 gloo processes (--grad-accum 1: 2 x 1 x 2 processes): the
    same steps, each caption once (no padding of the short steps of 3), the same weights.
    The short step splits unevenly (1 process: 2 + 1; 2 processes: 2 and 1), so a loss that
    averaged per micro-batch or per process would weigh its lone caption double. A run
    killed on 1 process at bsz 4 resumes on 2 at bsz 2 (execution knobs) to the same end,
    from the middle of an epoch, and one killed on 2 processes resumes on 1 (the DDP-wrapped
    model's checkpoint loads into the plain one)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"].update(save_every_minutes=0, log_every=1)  # no flag sets them
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))

    def args(name: str, *batch: str) -> list[str]:
        seed = _seed_args(demo_coco, eleven, tmp_path / name, tiny_models["llava"])
        at = seed.index("--grad-accum")
        return [*seed[:at], *seed[at + 2:], "--image-size", "32", "--lora-dropout", "0",
                "--max-steps", "0", "--epochs", "2", "--params", str(params), *batch]

    finetune_llava.main(args("one", "--bsz", "4", "--batch-size", "4"))
    finetune_llava.main(args("accumulated", "--bsz", "2", "--grad-accum", "2"))
    _two_processes(args("two", "--bsz", "2", "--grad-accum", "1"))

    original, calls = loop.Trainer._micro_step, []

    def killed_in_step_4(self, batch, window):
        calls.append(1)
        if len(calls) == 5:  # 1 micro-batch per step: in epoch 2, after checkpoint 4
            raise KeyboardInterrupt
        return original(self, batch, window)

    monkeypatch.setattr(loop.Trainer, "_micro_step", killed_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        finetune_llava.main(args("resumed", "--bsz", "4", "--batch-size", "4"))
    monkeypatch.setattr(loop.Trainer, "_micro_step", original)
    assert sorted(p.name for p in (tmp_path / "resumed" / "lora-checkpoints").glob("step-*")) == [
        "step-00000003", "step-00000004"]
    _two_processes(args("resumed", "--bsz", "2", "--batch-size", "4"))

    with pytest.raises(subprocess.CalledProcessError):
        _two_processes(args("back", "--bsz", "2", "--batch-size", "4"), kill_at=5)
    assert sorted(p.name for p in (tmp_path / "back" / "lora-checkpoints").glob("step-*")) == [
        "step-00000003", "step-00000004"]
    finetune_llava.main(args("back", "--bsz", "4", "--batch-size", "4"))

    runs = ("one", "accumulated", "two", "resumed", "back")
    metrics = {run: json.loads((tmp_path / run / "train.json").read_text()) for run in runs}
    assert [metrics[run]["processes"] for run in runs] == [1, 1, 2, 2, 1]
    assert metrics["resumed"]["resumed_from_step"] == metrics["back"]["resumed_from_step"] == 4
    for run in runs:
        assert list((tmp_path / run / "lora-checkpoints").iterdir()) == []  # samples too
        config = json.loads((tmp_path / run / "lora" / "train_config.json").read_text())
        assert config["batch_size"] == 4
        assert metrics[run]["steps"] == 6  # 2 epochs of 4 + 4 + 3
        assert metrics[run]["samples_trained"] == 22
    want = load_file(tmp_path / "one" / "lora" / "adapter_model.safetensors")
    for run in runs[1:]:
        assert metrics[run]["loss"] == pytest.approx(metrics["one"]["loss"], rel=1e-5)
        assert metrics[run]["val_loss"] == pytest.approx(metrics["one"]["val_loss"], rel=1e-5)
        got = load_file(tmp_path / run / "lora" / "adapter_model.safetensors")
        assert got.keys() == want.keys()
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5)
