"""What must never happen to a training run, through its commands on the tiny LLaVA: an
`--output-dir` that is not ours is wiped, `<image>` in the JSONL crashes a step, a NaN
loss trains on silently or reaches a checkpoint or the adapter."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_fixtures import REPO, write_demo_jsonl

from src.data.jsonl import JsonlError
from src.params import ParamsError
from src.train import finetune_llava, loop, recipe
from src.train.loop import NonFiniteError
from src.train.outputs import MARKER_FILE, OutputDirError

# One torch thread: deterministic, and far faster than two on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def params(tiny_models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's params on the tiny LLaVA, with a checkpoint after every step (no flag sets
    it) and few val images."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["model_id"] = str(tiny_models["llava"])
    raw["train"].update(save_every_minutes=0, eval_every=3, val_examples=8, log_every=1,
                        image_size=32, max_length=128)
    path = tmp_path_factory.mktemp("guards_params") / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def train_file(demo_coco: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("guards") / "train.jsonl"
    write_demo_jsonl(demo_coco, path, regions=False)
    return path


def _seed_args(demo_coco: Path, train_file: Path, out: Path, llava: Path, params: Path,
               max_steps: int = 2) -> list[str]:
    """The seed command: bsz 2 x grad_accum 2 (a batch of 4 captions on one process)."""
    return ["--train-file", str(train_file),
            "--val-ann", str(demo_coco / "annotations" / "captions_val2017.json"),
            "--val-images", str(demo_coco / "val2017"), "--output-dir", str(out / "lora"),
            "--checkpoint-dir", str(out / "checkpoints"), "--metrics", str(out / "train.json"),
            "--model-id", str(llava), "--image-size", "32", "--bsz", "2", "--grad-accum", "2",
            "--lr", "1e-3", "--max-steps", str(max_steps), "--max-length", "128",
            "--params", str(params), "--num-workers", "0"]


@pytest.fixture
def no_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(recipe, "load_processor", refuse)
    monkeypatch.setattr(recipe, "load_llava", refuse)


@pytest.mark.usefixtures("no_model_loads")
@pytest.mark.parametrize("command", ["seed finetune", "stage train"])
def test_an_existing_folder_with_a_file_survives_output_dir(
        tiny_models, demo_coco: Path, train_file: Path, params: Path, tmp_path: Path,
        command: str) -> None:
    """A mistyped `--output-dir ~/models` is refused, naming the folder, before any model
    loads; nothing in it is touched. A file given as the folder is refused too."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "notes.txt").write_text("a month of work\n")
    (models / "base").mkdir()
    for output_dir in (models, models / "notes.txt"):
        args = _seed_args(demo_coco, train_file, tmp_path, tiny_models["llava"], params)
        args[args.index("--output-dir") + 1] = str(output_dir)
        if command == "stage train":  # its knobs come from params only
            args = [*args[:args.index("--model-id")], "--params", str(params),
                    "--image-root", str(demo_coco), "--live-dir", str(tmp_path / "live")]
        with pytest.raises(OutputDirError, match=rf"--output-dir {output_dir} "):
            finetune_llava.main(args)
    assert sorted(p.name for p in models.iterdir()) == ["base", "notes.txt"]
    assert (models / "notes.txt").read_text() == "a month of work\n"
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.usefixtures("no_model_loads")
def test_a_batch_size_the_launch_cannot_split_fails_before_any_model_loads(
        tiny_models, demo_coco: Path, train_file: Path, params: Path, tmp_path: Path) -> None:
    """train.batch_size must be whole rounds of train.bsz per process; the error names the
    three numbers. The seed's --grad-accum and --batch-size set the same thing: not both."""
    args = _seed_args(demo_coco, train_file, tmp_path, tiny_models["llava"], params)
    with pytest.raises(ParamsError, match="give --batch-size or --grad-accum, not both"):
        finetune_llava.main([*args, "--batch-size", "4"])
    at = args.index("--grad-accum")
    args = [*args[:at], *args[at + 2:], "--bsz", "4", "--batch-size", "6"]
    with pytest.raises(ParamsError, match=r"^train\.batch_size=6 is not a multiple of "
                                          r"train\.bsz=4 x 1 processes = 4: "):
        finetune_llava.main(args)
    assert not (tmp_path / "checkpoints").exists()


def test_a_previous_adapter_is_replaced_whole_with_the_users_umask(
        tiny_models, demo_coco: Path, train_file: Path, params: Path, tmp_path: Path) -> None:
    """An empty folder is used; the next run (another lr) replaces the adapter whole, with
    nothing left beside it; the folder's mode follows the umask (mkdtemp gave 0700)."""
    (tmp_path / "lora").mkdir()
    args = _seed_args(demo_coco, train_file, tmp_path, tiny_models["llava"], params, max_steps=1)
    old_umask = os.umask(0o022)
    try:
        finetune_llava.main(args)
        (tmp_path / "lora" / "stale.txt").write_text("from an older run\n")
        finetune_llava.main([*args, "--lr", "5e-4"])
    finally:
        os.umask(old_umask)
    lora = tmp_path / "lora"
    assert (lora / MARKER_FILE).is_file() and not (lora / "stale.txt").exists()
    assert json.loads((lora / "train_config.json").read_text())["lr"] == 5e-4
    assert lora.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "lora", "train.json"]


def test_image_token_in_a_caption_is_counted_not_a_crash(
        tiny_models, demo_coco: Path, train_file: Path, params: Path, tmp_path: Path) -> None:
    """Without the check the processor expands the stray `<image>` into image features the
    image does not have, and step 1 crashes ("Image features and image tokens do not
    match"). Without --skip-malformed: an error naming file, line and field."""
    lines = train_file.read_text().splitlines()
    record = json.loads(lines[2])
    record["caption"] = "a red circle <image> on grey."
    lines[2] = json.dumps(record)
    record = json.loads(lines[5])
    record["prompt"] = "Caption it.</s>"
    lines[5] = json.dumps(record)
    poisoned = tmp_path / "poisoned.jsonl"
    poisoned.write_text("\n".join(lines) + "\n")
    args = _seed_args(demo_coco, poisoned, tmp_path, tiny_models["llava"], params, max_steps=2)
    with pytest.raises(JsonlError, match=rf"{poisoned}:3: field 'caption' contains the "
                                         r"special token text '<image>'"):
        finetune_llava.main(args)
    finetune_llava.main([*args, "--skip-malformed"])
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["malformed_lines"] == 2
    assert metrics["examples"] == len(lines) - 2
    assert metrics["steps"] == 2 and metrics["samples_trained"] == 8  # 2 steps x 2 x 2


def test_special_token_text_in_a_prompt_param_is_refused_before_the_model_loads(
        tiny_models, demo_coco: Path, train_file: Path, params: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Both prompts reach the model (the region prompt through the JSONL); each is named,
    before the model loads and before the data is encoded."""
    raw = yaml.safe_load(params.read_text())
    raw["caption_prompt"] = "Describe <image> briefly."
    raw["assemble"]["region_prompt"] = "Describe the region.</s>"
    poisoned = tmp_path / "params.yaml"
    poisoned.write_text(yaml.safe_dump(raw))

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(recipe, "load_llava", refuse)
    args = _seed_args(demo_coco, train_file, tmp_path, tiny_models["llava"], poisoned)
    with pytest.raises(ParamsError) as error:
        finetune_llava.main(args)
    assert str(error.value).splitlines() == [
        f"params: caption_prompt='Describe <image> briefly.': {_special('<image>')}",
        f"params: assemble.region_prompt='Describe the region.</s>': {_special('</s>')}"]
    assert not (tmp_path / "checkpoints").exists()


def _special(token: str) -> str:
    return (f"contains the special token text {token!r}, which the tokenizer reads as that "
            "token (a stray <image> misaligns the image features and crashes training)")


def test_special_token_text_in_a_validation_caption_is_malformed_as_in_the_jsonl(
        tiny_models, demo_coco: Path, train_file: Path, params: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The caption validation uses for an image (its lowest-id one) holds `</s>`: an error
    naming the file and the caption id; with --skip-malformed the image is left out and
    counted."""
    captions = json.loads((demo_coco / "annotations" / "captions_val2017.json").read_text())
    first = min(captions["annotations"], key=lambda a: a["id"])
    first["caption"] = "a red circle.</s> on grey"
    val_ann = tmp_path / "captions_val2017.json"
    val_ann.write_text(json.dumps(captions))
    args = _seed_args(demo_coco, train_file, tmp_path, tiny_models["llava"], params, max_steps=1)
    args[args.index("--val-ann") + 1] = str(val_ann)
    encoded, encode = [], recipe.encode_examples
    monkeypatch.setattr(recipe, "encode_examples",
                        lambda *given, **named: encoded.append(1) or encode(*given, **named))
    with pytest.raises(ValueError, match=rf"^{val_ann}: caption {first['id']} \(image "
                                         rf"{first['image_id']}\) contains the special token "
                                         r"text '</s>'"):
        finetune_llava.main(args)
    assert encoded == []  # found before the training file is encoded (minutes at COCO scale)
    monkeypatch.undo()
    finetune_llava.main([*args, "--skip-malformed"])
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["skipped_val"] == {"special_token": 1}
    assert metrics["val_examples"] == len(captions["images"]) - 1 == 7
    assert metrics["malformed_lines"] == 0 and metrics["steps"] == 1


def _checkpoint_files(checkpoints: Path) -> dict[Path, bytes]:
    """The checkpoints' files (not the run's samples, its other scratch there)."""
    return {p: p.read_bytes() for p in checkpoints.glob("step-*/**/*") if p.is_file()}


@pytest.mark.parametrize(("fault", "micro_batch", "step", "loss", "kept"), [
    ("nan pixels", 9, 5, "nan .*;", 4),  # step 5's loss; after the step-4 checkpoint
    ("nan weight", 8, 4, r"\d\.\d+ .*, weights not finite", 3),  # a finite loss, a NaN update
])
def test_a_nan_loss_stops_training_keeping_the_last_good_checkpoint(
        tiny_models, demo_coco: Path, train_file: Path, params: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, fault: str, micro_batch: int, step: int, loss: str,
        kept: int) -> None:
    """NaN pixels make a step's loss NaN; a NaN weight after a step with a finite loss is
    what an overflowing gradient does. Training stops at that step naming it and its loss;
    the checkpoints saved before it stay byte for byte; no adapter and no metrics are
    written; a rerun without the fault resumes from the last checkpoint and ends finite."""
    original = loop.Trainer._micro_step
    calls, saved = [], {}

    def planted(self, batch, window):
        calls.append(1)
        if len(calls) == micro_batch:
            saved.update(_checkpoint_files(tmp_path / "checkpoints"))
            if fault == "nan pixels":
                batch = {**batch,
                         "pixel_values": torch.full_like(batch["pixel_values"], math.nan)}
        done = original(self, batch, window)
        if len(calls) == micro_batch and fault == "nan weight":  # after the optimizer step
            with torch.no_grad():
                next(p for p in self.model.parameters() if p.requires_grad).fill_(math.nan)
        return done

    args = _seed_args(demo_coco, train_file, tmp_path, tiny_models["llava"], params, max_steps=6)
    monkeypatch.setattr(loop.Trainer, "_micro_step", planted)
    with pytest.raises(NonFiniteError, match=rf"^step {step}: training loss {loss}"):
        finetune_llava.main(args)
    checkpoints = tmp_path / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == [  # the 2 newest are kept
        f"step-{n:08d}" for n in (kept - 1, kept)]
    assert _checkpoint_files(checkpoints) == saved
    last = checkpoints / f"step-{kept:08d}"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == kept and state["train_loss"] > 0
    weights = load_file(last / "model.safetensors")
    assert weights and all(tensor.isfinite().all() for tensor in weights.values())
    assert not (tmp_path / "lora").exists() and not (tmp_path / "train.json").exists()

    monkeypatch.setattr(loop.Trainer, "_micro_step", original)
    finetune_llava.main(args)
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["resumed_from_step"] == kept and metrics["steps"] == 6
    adapter = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    assert all(tensor.isfinite().all() for tensor in adapter.values())
