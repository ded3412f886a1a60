"""Preflight: missing inputs, models, Java or 4-bit support fail before any long work."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate import PartialState
from train_fixtures import demo_paths, tiny_config

from src.eval import run as eval_run
from src.eval.run import EvalConfig, EvalOutputs, evaluate
from src.params import load_params
from src.preflight import model_problem, require_models, require_paths
from src.train import recipe
from src.train.recipe import finetune

REPO = Path(__file__).resolve().parents[1]


def _never(*args: object, **kwargs: object) -> None:
    raise AssertionError("long work started before the preflight failed")


def test_require_paths_names_every_missing_path(tmp_path: Path) -> None:
    require_paths(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"missing input\\(s\\): {tmp_path / 'a'}, "
                                                f"{tmp_path / 'b'}"):
        require_paths(tmp_path / "a", tmp_path, tmp_path / "b")


def test_model_problem(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    assert model_problem(str(tiny_models["clip"])) is None
    assert "config.json" in model_problem(str(tmp_path))  # a directory without a model
    require_models(str(tiny_models["llava"]), str(tiny_models["grounding-dino"]))
    with pytest.raises(OSError, match=r"config\.json"):
        require_models(str(tiny_models["llava"]), str(tmp_path))


def _eval_config(demo_coco: Path, model_id: str, clip_model_id: str) -> EvalConfig:
    params = load_params(REPO / "params.yaml")
    config = EvalConfig.from_params(params, adapter_dir=None, images_dir=demo_coco / "val2017",
                                    ann_path=demo_coco / "annotations/captions_val2017.json")
    return EvalConfig(**{**vars(config), "model_id": model_id, "clip_model_id": clip_model_id,
                         "num_workers": 0})


def test_evaluate_checks_java_and_models_before_captioning(
        demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eval_run, "_generate", _never)
    outputs = EvalOutputs(metrics=tmp_path / "m.json", predictions=tmp_path / "p.json")
    llava, clip = str(tiny_models["llava"]), str(tiny_models["clip"])
    with pytest.raises(OSError, match=r"config\.json"):
        evaluate(_eval_config(demo_coco, str(tmp_path), clip), outputs, PartialState())
    with pytest.raises(FileNotFoundError, match="missing input"):
        evaluate(_eval_config(tmp_path, llava, clip), outputs, PartialState())

    def no_java() -> None:
        raise RuntimeError("pycocoevalcap needs Java")

    monkeypatch.setattr(eval_run, "find_java_bin_dir", no_java)
    with pytest.raises(RuntimeError, match="needs Java"):
        evaluate(_eval_config(demo_coco, llava, clip), outputs, PartialState())
    assert not outputs.metrics.exists()


def test_finetune_checks_inputs_model_and_4bit_before_the_data(
        demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipe, "_setup_data", _never)
    paths = demo_paths(demo_coco, tmp_path / "missing.jsonl", tmp_path)
    with pytest.raises(FileNotFoundError, match=r"missing\.jsonl"):
        finetune(tiny_config(tiny_models["llava"]), paths)
    (tmp_path / "missing.jsonl").write_text("")
    with pytest.raises(OSError, match=r"config\.json"):
        finetune(tiny_config(tmp_path), paths)

    def no_4bit() -> None:
        raise RuntimeError("bitsandbytes cannot quantise to 4 bit on this machine")

    monkeypatch.setattr(recipe, "check_4bit_support", no_4bit)
    with pytest.raises(RuntimeError, match="cannot quantise"):
        finetune(tiny_config(tiny_models["llava"], load_in_4bit=True), paths)
    finetune_4bit_off = tiny_config(tiny_models["llava"], load_in_4bit=False)
    with pytest.raises(AssertionError, match="long work started"):  # the check passed
        finetune(finetune_4bit_off, paths)
