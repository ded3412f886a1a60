"""The recipe on the tiny LLaVA: outputs, image skips, resume after a kill, stale checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from stage_runs import edit, project_copy
from train_fixtures import demo_paths, tiny_config, write_demo_jsonl
from transformers import AutoProcessor

from src.data.jsonl import Example, JsonlError, read_examples, write_examples
from src.models.llava import IGNORE_INDEX, load_llava, load_processor, processor_image_size
from src.train import loop, recipe
from src.train.data import CaptionDataset, Collate, encode_examples
from src.train.loop import batch_caption_losses, caption_losses
from src.train.outputs import save_adapter_dir
from src.train.recipe import FinetuneConfig, finetune

# One torch thread: deterministic, and far faster than two on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")



def test_caption_loss_scores_each_label_with_the_logits_one_position_before() -> None:
    """Labels come unshifted: the logits at position t score the label at t + 1. The last
    position's logits predict nothing; huge values there catch a missing shift."""
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [-50.0, 50.0]],
                           [[9.0, -9.0], [0.0, 3.0], [50.0, -50.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 1, 0], [IGNORE_INDEX, IGNORE_INDEX, 1]])
    losses = caption_losses(logits, labels)
    # Row 0: mean of -log softmax([0, 0])[1] and -log softmax([2, 0])[0]; row 1: one token.
    expected = [(math.log(2) + math.log(1 + math.exp(-2))) / 2, math.log(1 + math.exp(-3))]
    assert losses.tolist() == pytest.approx(expected, rel=1e-6)


def test_logits_only_where_the_loss_reads_them(tiny_models, demo_coco: Path,
                                               train_file: Path, tmp_path: Path) -> None:
    """A right-padded batch of a long and a short caption: the loss from the kept logits
    equals the loss from all of them, and the vocabulary projection sees only the tail."""
    processor = load_processor(str(tiny_models["llava"]), 32)
    examples, _ = read_examples(train_file)
    pair = [next(e for e in examples if e.kind == "full"),
            next(e for e in examples if e.kind == "region")]
    samples, _ = encode_examples(pair, processor, max_length=128, drop_bad_masks=False,
                                 table_path=tmp_path / "s.arrow")
    dataset = CaptionDataset(samples, processor, demo_coco)
    batch = Collate(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    model = load_llava(str(tiny_models["llava"]), 32, dtype=torch.float32).eval()
    projected = []
    model.lm_head.register_forward_hook(lambda module, args, out: projected.append(out.shape[1]))
    with torch.no_grad():
        kept = batch_caption_losses(model, batch)
        full = caption_losses(model(**{k: batch[k] for k in loop.MODEL_INPUTS}).logits,
                              batch["labels"])
    length = batch["labels"].shape[1]
    caption_start = min(next(i for i, label in enumerate(s.labels) if label != IGNORE_INDEX)
                        for s in samples)
    assert projected == [length - caption_start + 1, length] and projected[0] < length / 2
    torch.testing.assert_close(kept, full, rtol=1e-6, atol=1e-6)


class Killed(Exception):
    """Stands for SIGKILL in the middle of a step."""


@pytest.fixture(scope="module")
def train_file(demo_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("train") / "train.jsonl"
    write_demo_jsonl(demo_coco, path)
    return path


def _adapter(out_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(out_dir / "lora" / "adapter_model.safetensors")


def _steps(live_dir: Path, name: str) -> list[int]:
    with open(live_dir / "plots" / "metrics" / f"{name}.tsv", newline="") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle, delimiter="\t")]


def _with_broken_images(demo_coco: Path, train_file: Path, tmp_path: Path,
                        good: int) -> tuple[Path, Path]:
    """A JSONL of `good` demo examples then 2 whose image is corrupt, and its image root
    (the demo images plus the corrupt one)."""
    examples, _ = read_examples(train_file)
    image_root = tmp_path / "images"
    image_root.mkdir()
    (image_root / "train2017").symlink_to(demo_coco / "train2017")
    (image_root / "broken.jpg").write_bytes(b"not a jpeg")
    broken = [Example(f"b{i}", "broken.jpg", "full", None, examples[0].prompt, "a red circle.")
              for i in range(2)]
    small = tmp_path / "small.jsonl"
    write_examples(small, [*examples[:good], *broken])
    return small, image_root


def test_outputs_and_counted_image_skips(tiny_models, demo_coco: Path, train_file: Path,
                                         tmp_path: Path) -> None:
    """bsz 1: a batch whose only image is unreadable must not stall or crash the run."""
    small, image_root = _with_broken_images(demo_coco, train_file, tmp_path, good=4)
    with open(small, "a") as handle:
        handle.write('{"id": "bad", "image": "x.jpg"}\n')  # line 7: no kind, prompt, caption
    config = tiny_config(tiny_models["llava"], batch_size=2, bsz=1, max_steps=0,
                         train_projector=True)
    paths = dataclasses.replace(demo_paths(demo_coco, small, tmp_path), image_root=image_root)
    with pytest.raises(JsonlError, match=rf"{small}:7: field 'kind'"):
        finetune(config, paths, show_progress=False)
    metrics = finetune(dataclasses.replace(config, skip_malformed=True), paths,
                       show_progress=False)

    assert metrics["malformed_lines"] == 1
    assert metrics["steps"] == 3 and metrics["samples_trained"] == 4
    assert metrics["skipped"] == {"not_an_image": 2} and metrics["skipped_images"] == 2
    assert json.loads((tmp_path / "train.json").read_text()) == metrics
    lora_dir = tmp_path / "lora"
    assert {"adapter_model.safetensors", "adapter_config.json", "processor_config.json",
            "tokenizer.json", "train_config.json", "README.md"} <= {
        p.name for p in lora_dir.iterdir()}
    assert f"{metrics['val_loss']:.4f}" in (lora_dir / "README.md").read_text()
    assert json.loads((lora_dir / "train_config.json").read_text())["skip_malformed"]
    adapter_config = json.loads((lora_dir / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] == ["multi_modal_projector"]
    # What evaluation does: processor (and image size) from the adapter dir, then the adapter.
    processor = AutoProcessor.from_pretrained(lora_dir)
    base = load_llava(str(tiny_models["llava"]), processor_image_size(processor),
                      dtype=torch.float32)
    model = PeftModel.from_pretrained(base, lora_dir)
    saved = _adapter(tmp_path)
    loaded = dict(model.named_parameters())
    assert all(torch.equal(loaded[name.replace(".weight", ".default.weight")], tensor)
               for name, tensor in saved.items() if "lora_" in name)
    assert _steps(tmp_path / "live", "val_loss") == [0, 3]
    assert _steps(tmp_path / "live", "loss") == [1, 2, 3]


def test_an_image_skipped_in_every_epoch_counts_once(tiny_models, demo_coco: Path,
                                                    train_file: Path, tmp_path: Path) -> None:
    """Two epochs over 2 good and 2 unreadable examples: 4 samples trained, 2 skips."""
    small, image_root = _with_broken_images(demo_coco, train_file, tmp_path, good=2)
    config = tiny_config(tiny_models["llava"], batch_size=2, bsz=2, max_steps=0, epochs=2,
                         val_examples=1)
    paths = dataclasses.replace(demo_paths(demo_coco, small, tmp_path), image_root=image_root)
    metrics = finetune(config, paths, show_progress=False)
    assert metrics["steps"] == 4 and metrics["samples_trained"] == 4
    assert metrics["skipped"] == {"not_an_image": 2} and metrics["skipped_images"] == 2


def test_resume_after_a_kill_equals_an_uninterrupted_run(tiny_models, demo_coco: Path,
                                                         train_file: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(tiny_models["llava"], lora_dropout=0.1)  # dropout: RNG must resume too
    whole = finetune(config, demo_paths(demo_coco, train_file, tmp_path / "whole"),
                     show_progress=False)

    original = loop.Trainer._micro_step
    calls = []

    def killed_in_step_4(self, batch, window):
        calls.append(1)
        if len(calls) == 7:  # micro-batch 7 of 2 per step: after checkpoint 3, before 4
            raise Killed
        return original(self, batch, window)

    paths = demo_paths(demo_coco, train_file, tmp_path / "resumed")
    monkeypatch.setattr(loop.Trainer, "_micro_step", killed_in_step_4)
    with pytest.raises(Killed):
        finetune(config, paths, show_progress=False)
    monkeypatch.setattr(loop.Trainer, "_micro_step", original)
    assert sorted(p.name for p in paths.checkpoint_dir.iterdir()) == [
        "samples", "step-00000002", "step-00000003"]  # saved every step, the 2 newest kept
    assert not paths.output_dir.exists()
    resumed = finetune(config, paths, show_progress=False)

    assert resumed["resumed_from_step"] == 3 and resumed["steps"] == whole["steps"] == 6
    a, b = _adapter(tmp_path / "whole"), _adapter(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-5)
    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert _steps(paths.live_dir, "loss") == [1, 2, 3, 4, 5, 6]  # no doubled steps
    assert _steps(paths.live_dir, "val_loss") == [0, 3, 6]


@pytest.mark.parametrize(("minutes", "saved"), [(0, [1, 2, 3, 4, 5, 6]), (2, [2, 4, 6]),
                                                (10**6, [6])])
def test_checkpoints_are_spaced_in_minutes_of_work(tiny_models, demo_coco: Path,
                                                  train_file: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  minutes: float, saved: list[int]) -> None:
    """A clock that runs 30 s per micro-batch, 1 min per step of 2: every 2 minutes of work
    is every 2 steps; 0 saves after every step; a long interval saves the final step only."""
    now = [0.0]
    micro_step, save = loop.Trainer._micro_step, loop.Trainer._save
    steps = []

    def timed(self, batch, window):
        now[0] += 30
        return micro_step(self, batch, window)

    def recorded(self, state):
        steps.append(state.step)
        return save(self, state)

    monkeypatch.setattr(loop, "clock", lambda: now[0])
    monkeypatch.setattr(loop.Trainer, "_micro_step", timed)
    monkeypatch.setattr(loop.Trainer, "_save", recorded)
    metrics = finetune(tiny_config(tiny_models["llava"], save_every_minutes=minutes),
                       demo_paths(demo_coco, train_file, tmp_path), show_progress=False)
    assert metrics["steps"] == 6 and steps == saved


def test_a_final_checkpoint_is_reused_only_by_the_same_code_and_config(
        tiny_models, demo_coco: Path, train_file: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    paths = demo_paths(demo_coco, train_file, tmp_path)
    config = tiny_config(tiny_models["llava"], max_steps=2)
    first = finetune(config, paths, show_progress=False)
    adapter = _adapter(tmp_path)
    assert list(paths.checkpoint_dir.iterdir()) == []  # a finished run keeps no resume scratch
    again = finetune(config, paths, show_progress=False)  # `dvc repro -f`: trains again
    assert again["resumed_from_step"] == 0 and again["tokens_per_second"] > 0
    assert again["samples_trained"] == first["samples_trained"] == 16

    def killed_before_the_outputs(*args: object, **kwargs: object) -> None:
        raise Killed

    def final_checkpoint_only(config: FinetuneConfig) -> None:
        monkeypatch.setattr(recipe, "save_adapter_dir", killed_before_the_outputs)
        with pytest.raises(Killed):
            finetune(config, paths, show_progress=False)
        monkeypatch.setattr(recipe, "save_adapter_dir", save_adapter_dir)
        assert "step-00000002" in {p.name for p in paths.checkpoint_dir.iterdir()}

    final_checkpoint_only(config)
    project = project_copy(tmp_path / "project", monkeypatch)
    resumed = finetune(config, paths, show_progress=False)  # the copy is the same code
    assert resumed["resumed_from_step"] == 2 and resumed["tokens_per_second"] is None
    assert resumed["samples_trained"] == 16 and resumed["loss"] == again["loss"]
    assert all(torch.equal(tensor, _adapter(tmp_path)[name]) for name, tensor in adapter.items())

    final_checkpoint_only(config)
    edit(project / "src" / "train" / "loop.py")
    changed_code = finetune(config, paths, show_progress=False)
    assert changed_code["resumed_from_step"] == 0 and changed_code["tokens_per_second"] > 0

    final_checkpoint_only(config)
    changed = finetune(tiny_config(tiny_models["llava"], max_steps=2, lr=5e-4), paths,
                       show_progress=False)
    assert changed["resumed_from_step"] == 0
    assert list(paths.checkpoint_dir.iterdir()) == []


def test_the_training_seed_not_the_data_seed_decides_the_weights(
        tiny_models, demo_coco: Path, train_file: Path, tmp_path: Path) -> None:
    """`train.seed` drives LoRA init, data order and dropout; `seed` (data_seed here) only
    picks the validation captions, so it changes the val loss and never a weight."""
    runs = {"base": {}, "train_seed": {"seed": 1}, "data_seed": {"data_seed": 1}}
    adapters, metrics = {}, {}
    for name, change in runs.items():
        config = tiny_config(tiny_models["llava"], max_steps=2, lora_dropout=0.1, val_examples=4,
                             **change)
        metrics[name] = finetune(config, demo_paths(demo_coco, train_file, tmp_path / name),
                                 show_progress=False)
        adapters[name] = _adapter(tmp_path / name)
    same = [torch.equal(adapters["base"][key], adapters["data_seed"][key])
            for key in adapters["base"]]
    differ = [torch.equal(adapters["base"][key], adapters["train_seed"][key])
              for key in adapters["base"] if "lora_" in key]
    assert all(same) and not any(differ)
    assert metrics["base"]["loss"] == metrics["data_seed"]["loss"] != metrics["train_seed"]["loss"]
    assert metrics["base"]["val_loss"] != metrics["data_seed"]["val_loss"]
