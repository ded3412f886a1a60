"""The seed command `python -m src.eval.evaluate_coco`: base, + adapter, real COCO, 2 processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from library_helpers import flat_metrics
from peft import LoraConfig, get_peft_model

from src.eval import evaluate_coco
from src.eval.captioner import load_captioner
from src.models.llava import load_llava, load_processor, processor_image_size

REPO = Path(__file__).resolve().parents[1]
ADAPTER_IMAGE_SIZE = 64  # differs from the tiny checkpoint's 32: eval must take it from the dir


@pytest.fixture(scope="module")
def tiny_adapter(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter dir as training writes it (adapter + processor at the training size),
    with random non-zero LoRA weights so that it changes the captions."""
    base = str(tiny_models["llava"])
    torch.manual_seed(0)
    model = load_llava(base, ADAPTER_IMAGE_SIZE, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)",
                        init_lora_weights=False)
    out = tmp_path_factory.mktemp("adapter")
    get_peft_model(model, config).save_pretrained(out)
    load_processor(base, ADAPTER_IMAGE_SIZE).save_pretrained(out)
    return out


def _args(coco: Path, out: Path, tiny_models: dict[str, Path], *extra: str) -> list[str]:
    return ["--images", str(coco / "val2017"),
            "--ann", str(coco / "annotations/captions_val2017.json"),
            "--instances", str(coco / "annotations/instances_val2017.json"),
            "--model-id", str(tiny_models["llava"]), "--clip-model-id", str(tiny_models["clip"]),
            "--batch-size", "4", "--max-new-tokens", "8", "--no-meteor",
            "--out", str(out / "metrics.json"), "--predictions", str(out / "predictions.json"),
            "--params", str(REPO / "params.yaml"), *extra]


def _predictions(out: Path) -> dict[int, str]:
    return {p["image_id"]: p["caption"] for p in json.loads((out / "predictions.json").read_text())}


def test_image_size_comes_from_the_adapter_dir(tiny_models: dict[str, Path],
                                               tiny_adapter: Path) -> None:
    cpu = torch.device("cpu")
    model, processor = load_captioner(str(tiny_models["llava"]), tiny_adapter, device=cpu,
                                      dtype=torch.float32)
    assert processor_image_size(processor) == ADAPTER_IMAGE_SIZE
    assert model.config.vision_config.image_size == ADAPTER_IMAGE_SIZE
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged
    base, base_processor = load_captioner(str(tiny_models["llava"]), None, device=cpu,
                                          dtype=torch.float32)
    assert processor_image_size(base_processor) == base.config.vision_config.image_size == 32
    # The base pads to a square as the adapters trained with pad_to_square do.
    _, padded = load_captioner(str(tiny_models["llava"]), None, device=cpu,
                               dtype=torch.float32, pad_to_square=True)
    assert not base_processor.image_processor.to_dict().get("do_pad")
    assert padded.image_processor.to_dict()["do_pad"]


@pytest.mark.slow
def test_base_and_adapter_on_the_demo_split(demo_coco: Path, tiny_models: dict[str, Path],
                                            tiny_adapter: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    evaluate_coco.main(_args(demo_coco, tmp_path / "base", tiny_models, "--num-examples", "6"))
    table = capsys.readouterr().out
    metrics = json.loads((tmp_path / "base/metrics.json").read_text())
    lines = table.splitlines()
    low, high = metrics["cider_ci95"]
    assert lines[0].split()[:2] == ["BLEU-4", f"{metrics['bleu4']:.4f}"]
    assert lines[1].split() == ["CIDEr", f"{metrics['cider']:.4f}", f"[{low:.4f},", f"{high:.4f}]"]
    assert any(line.split()[:2] == ["CHAIR_i", f"{metrics['chair_i']:.4f}"] for line in lines)
    assert f"n_images {metrics['n_images']}" in " ".join(" ".join(line.split()) for line in lines)
    assert metrics["n_images"] == 6 and len(_predictions(tmp_path / "base")) == 6

    evaluate_coco.main(_args(demo_coco, tmp_path / "tuned", tiny_models, "--num-examples", "6",
                             "--model", str(tiny_adapter), "--per-image",
                             str(tmp_path / "tuned/per_image.csv"),
                             "--gallery", str(tmp_path / "tuned/gallery.png")))
    tuned = _predictions(tmp_path / "tuned")
    assert tuned.keys() == _predictions(tmp_path / "base").keys()
    assert tuned != _predictions(tmp_path / "base")  # the adapter was applied
    assert (tmp_path / "tuned/per_image.csv").is_file()
    assert (tmp_path / "tuned/gallery.png").is_file()


@pytest.mark.slow
def test_real_coco_mini_val(coco_mini: Path, tiny_models: dict[str, Path],
                            tmp_path: Path) -> None:
    evaluate_coco.main(_args(coco_mini, tmp_path, tiny_models, "--num-examples", "0",
                             "--batch-size", "16"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    ann = json.loads((coco_mini / "annotations/captions_val2017.json").read_text())
    assert metrics["n_images"] == len(ann["images"]) == 60
    assert metrics["skipped"] == 0
    assert sorted(_predictions(tmp_path)) == sorted(image["id"] for image in ann["images"])
    # coco-mini ships no instances_val2017.json: CHAIR is left out, said so, nothing fails
    assert metrics["chair_i"] is None and "not found" in metrics["chair_unavailable"]


@pytest.mark.slow
def test_two_processes_give_the_same_predictions(demo_coco: Path, tiny_models: dict[str, Path],
                                                 tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    for processes in (1, 2):
        out = tmp_path / f"procs{processes}"
        completed = subprocess.run(
            [torchrun, "--nproc_per_node", str(processes), "-m", "src.eval.evaluate_coco",
             *_args(demo_coco, out, tiny_models, "--num-examples", "0", "--batch-size", "3")],
            cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert completed.returncode == 0, completed.stderr[-3000:]
        assert f"on this process of {processes}" in completed.stderr
        assert completed.stdout.count("BLEU-4") == 1  # only the main process scores and prints
    assert _predictions(tmp_path / "procs1") == _predictions(tmp_path / "procs2")
    assert len(_predictions(tmp_path / "procs1")) == 8
    one = json.loads((tmp_path / "procs1/metrics.json").read_text())
    two = json.loads((tmp_path / "procs2/metrics.json").read_text())
    assert flat_metrics(one) == pytest.approx(flat_metrics(two))


@pytest.mark.slow
def test_offline_unloadable_clip_still_writes_every_caption_metric(
        demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """Offline with a CLIP id that is nowhere: a notice before captioning, then BLEU-4 and
    CIDEr printed and metrics.json written with CLIPScore marked unavailable."""
    args = _args(demo_coco, tmp_path, tiny_models, "--num-examples", "4")
    args[args.index("--clip-model-id") + 1] = "no-such-org/no-such-clip"
    done = subprocess.run([sys.executable, "-m", "src.eval.evaluate_coco", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    notice = done.stderr.index("CLIPScore will be left out: could not load "
                               "'no-such-org/no-such-clip'")
    assert notice < done.stderr.index("to run in")  # before any captioning (the shard map)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n_images"] == 4
    assert {"bleu4", "rougeL", "cider"} <= metrics.keys()
    assert metrics["clipscore"] is None and metrics["refclipscore"] is None
    assert "no-such-org/no-such-clip" in metrics["clipscore_unavailable"]
    lines = [line.split()[:2] for line in done.stdout.splitlines()]
    assert lines[0] == ["BLEU-4", f"{metrics['bleu4']:.4f}"]
    assert lines[1] == ["CIDEr", f"{metrics['cider']:.4f}"]
    assert ["CLIPScore", "unavailable"] in lines


@pytest.mark.parametrize("adapter", [False, True])
def test_special_token_text_in_the_prompt_is_refused_before_the_model_loads(
        demo_coco: Path, tiny_models: dict[str, Path], tiny_adapter: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, adapter: bool) -> None:
    """A prompt holding `<image>` would add a second image placeholder: named, and refused
    once the processor (base or the adapter's) is known, before the model loads."""
    from src.eval import captioner
    from src.params import ParamsError

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(captioner, "load_llava", refuse)
    extra = ["--prompt", "Caption <image> please."]
    if adapter:
        extra += ["--model", str(tiny_adapter)]
    with pytest.raises(ParamsError) as error:
        evaluate_coco.main(_args(demo_coco, tmp_path, tiny_models, *extra))
    assert str(error.value) == (
        "params: caption_prompt='Caption <image> please.': contains the special token text "
        "'<image>', which the tokenizer reads as that token (a stray <image> misaligns the "
        "image features and crashes training)")
    assert not (tmp_path / "metrics.json").exists()
