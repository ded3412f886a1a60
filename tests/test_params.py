"""params.yaml parses, typos and bad values fail at start naming the key, and dvc.yaml names
only keys that exist."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from src.params import ParamsError, flat_keys, load_params, override, validate

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, changes: dict[str, object]) -> Path:
    """The repo's params.yaml with each dotted key set to its value."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in changes.items():
        *sections, name = key.split(".")
        node = raw
        for section in sections:
            node = node[section]
        node[name] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_params_yaml_parses() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.clip_threshold == pytest.approx(0.26)
    assert params.box_threshold == pytest.approx(0.30)
    assert params.train.batch_size == 16 and params.train.bsz == 1


def test_typo_and_wrong_type_fail(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["lrr"] = raw["train"].pop("lr")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"train: unknown keys \['lrr'\], missing keys \['lr'\]"):
        load_params(tmp_path / "p.yaml")
    with pytest.raises(ParamsError, match=r"detect\.batch_size='eight': expected int"):
        load_params(_write(tmp_path, {"detect.batch_size": "eight"}))
    with pytest.raises(ParamsError, match=r"train\.lr='fast': expected float"):
        load_params(_write(tmp_path, {"train.lr": "fast"}))


@pytest.mark.parametrize(("key", "value", "reason"), [
    ("train.lora_r", -4, "must be > 0"),
    ("train.bsz", 0, "must be > 0"),
    ("assemble.region_format", "boxx", "must be one of crop, box"),
    ("max_images", -3, "must be >= 0"),
    ("train.lora_target", ".*(q_proj|v_proj", "must be a valid regular expression"),
    ("box_threshold", 1.5, "must be in [0, 1]"),
    ("text_threshold", -0.1, "must be in [0, 1]"),
    ("clip_threshold", 1.2, "must be in [-1, 1]"),
    ("profile", "cocoa", "must be one of coco, demo"),
    ("evaluate.num_examples", -1, "must be >= 0"),
    ("clip_score.caption_template", "a photo", "must contain {phrase}"),
    # Non-finite floats pass `> 0` and `>= 0`; caught by the rule every float gets.
    ("train.lr", float("inf"), "must be a finite number"),
    ("clip_score.crop_pad_frac", float("inf"), "must be a finite number"),
    ("train.max_grad_norm", float("inf"), "must be a finite number"),
    ("seed", 2**40, "must be in [0, 4294967295] (numpy's seed range)"),
    ("seed", 2**32, "must be in [0, 4294967295]"),
])
def test_invalid_value_names_key_value_and_reason(tmp_path: Path, key: str, value: object,
                                                  reason: str) -> None:
    path = _write(tmp_path, {key: value})
    with pytest.raises(ParamsError) as error:
        load_params(path)
    assert str(error.value).startswith(f"{path}: {key}={value!r}: {reason}")


def test_yaml_infinity_is_refused_and_seeds_reach_numpys_limit(tmp_path: Path) -> None:
    """`.inf` as written in params.yaml (a YAML float); the largest seed numpy takes passes,
    and so does a `seed` key in any section (the rule goes by the name)."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("lr: 1.0e-4", "lr: .inf"))
    with pytest.raises(ParamsError, match=r"train\.lr=inf: must be a finite number"):
        load_params(path)
    assert load_params(_write(tmp_path, {"seed": 2**32 - 1})).seed == 2**32 - 1
    params = load_params(REPO / "params.yaml")
    train = dataclasses.replace(params.train, seed=2**40)
    with pytest.raises(ParamsError, match=r"train\.seed=1099511627776: must be in"):
        validate(dataclasses.replace(params, train=train), "test")
@pytest.mark.parametrize(("region_format", "prompt"),
                         [("box", "Name it."), ("crop", "Name {box}.")])
def test_region_prompt_holds_box_exactly_for_box_format(tmp_path: Path, region_format: str,
                                                        prompt: str) -> None:
    path = _write(tmp_path, {"assemble.region_format": region_format,
                             "assemble.region_prompt": prompt})
    with pytest.raises(ParamsError, match=rf"{path}: assemble.region_prompt='Name.*must contain "
                                          r"\{box\} exactly when"):
        load_params(path)


def test_floor_above_a_threshold_says_why(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as error:
        load_params(_write(tmp_path, {"detect.floor_score": 0.5, "box_threshold": 0.30}))
    assert "detect.floor_score=0.5: must not exceed box_threshold (0.3)" in str(error.value)
    assert "silently return fewer boxes" in str(error.value)
    with pytest.raises(ParamsError, match=r"detect\.floor_score=0\.28"):  # above text 0.25 only
        load_params(_write(tmp_path, {"detect.floor_score": 0.28}))
    assert load_params(_write(tmp_path, {"detect.floor_score": 0.25})).detect.floor_score == 0.25


def test_every_bad_value_is_listed(tmp_path: Path) -> None:
    with pytest.raises(ParamsError) as error:
        load_params(_write(tmp_path, {"train.bsz": 0, "max_images": -3}))
    assert str(error.value).count("\n") == 1
    assert "train.bsz=0" in str(error.value) and "max_images=-3" in str(error.value)


def test_scientific_notation_is_a_float(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text().replace("lr: 1.0e-4", "lr: 1e-4")
    path.write_text(text)
    assert yaml.safe_load(text)["train"]["lr"] == "1e-4"  # why it needs accepting
    assert load_params(path).train.lr == 1e-4
    assert load_params(_write(tmp_path, {"box_threshold": "3.5E-1"})).box_threshold == 0.35
    with pytest.raises(ParamsError, match=r"train\.lr='1e-4x': expected float"):
        load_params(_write(tmp_path, {"train.lr": "1e-4x"}))
    with pytest.raises(ParamsError, match=r"train\.lr='nan': expected float"):
        load_params(_write(tmp_path, {"train.lr": "nan"}))


def test_a_revision_is_null_or_a_hub_ref_of_a_hub_id(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    assert (params.detector_revision, params.clip_model_revision, params.model_revision) == (
        None, None, None)  # the hub's main branch
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert load_params(_write(tmp_path, {"model_revision": commit})).model_revision == commit
    assert override(params, {"clip_model_revision": "v1.0"}).clip_model_revision == "v1.0"
    with pytest.raises(ParamsError, match=r"model_revision='': must be a branch, tag or commit"):
        load_params(_write(tmp_path, {"model_revision": ""}))
    with pytest.raises(ParamsError, match=r"detector_revision=7: expected str"):
        load_params(_write(tmp_path, {"detector_revision": 7}))
    local = str(tmp_path)
    with pytest.raises(ParamsError, match=rf"model_revision='v1': must be null: model_id "
                                          rf"'{local}' is a local directory"):
        load_params(_write(tmp_path, {"model_id": local, "model_revision": "v1"}))
    assert load_params(_write(tmp_path, {"model_id": local})).model_id == local


def test_override_replaces_by_dotted_key_and_validates() -> None:
    params = load_params(REPO / "params.yaml")
    changed = override(params, {"box_threshold": 0.4, "detect.batch_size": 4, "train.lr": 2e-4,
                                "model_id": None, "evaluate.meteor": False})
    assert (changed.box_threshold, changed.detect.batch_size, changed.train.lr) == (0.4, 4, 2e-4)
    assert changed.model_id == params.model_id  # None: not given
    assert changed.evaluate.meteor is False and params.evaluate.meteor is True
    assert changed.detect.floor_score == params.detect.floor_score
    with pytest.raises(ParamsError, match=r"^command line: box_threshold=1.5: must be in"):
        override(params, {"box_threshold": 1.5})
    with pytest.raises(ParamsError, match=r"detect\.floor_score=0\.15: must not exceed"):
        override(params, {"box_threshold": 0.1})
    with pytest.raises(ParamsError, match=r"train\.bsz='2': expected int"):
        override(params, {"train.bsz": "2"})
    with pytest.raises(ParamsError, match=r"unknown param 'train\.bs'"):
        override(params, {"train.bs": 2})


# The stages' entry points, with the arguments dvc.yaml gives (paths need not exist: the
# params are checked first).
ENTRY_POINTS = {name: stage["cmd"].split()[2:] for name, stage in
                yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items()}
SEED_COMMANDS = {
    "augment": ["src.augment.augment_gdino_clip", "--coco-root", "c", "--out", "o.jsonl"],
    "finetune": ["src.train.finetune_llava", "--train-file", "t", "--val-ann", "v",
                 "--val-images", "i", "--output-dir", "o", "--lr", "1e-4"],
    "evaluate": ["src.eval.evaluate_coco", "--images", "i", "--ann", "a"],
}


def _run_entry_point(module: str, args: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run `python -m module args`; stdout ends with whether torch was imported."""
    probe = ("import runpy, sys\n"
             f"sys.argv = ['x', *{args!r}]\n"
             "try:\n"
             f"    runpy.run_module({module!r}, run_name='__main__')\n"
             "finally:\n"
             "    print('torch imported' if 'torch' in sys.modules else 'torch not imported')\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    return done, time.monotonic() - start


@pytest.mark.parametrize("command", [*(f"stage {name}" for name in sorted(ENTRY_POINTS)),
                                     *(f"seed {name}" for name in sorted(SEED_COMMANDS))])
def test_bad_params_file_fails_fast_before_importing_torch(tmp_path: Path, command: str) -> None:
    """A bad value stops every stage and seed command in seconds, naming the key, before any
    ML library (and so any model) is loaded."""
    path = _write(tmp_path, {"train.lora_r": -4})
    kind, name = command.split()
    module, *args = (ENTRY_POINTS if kind == "stage" else SEED_COMMANDS)[name]
    done, seconds = _run_entry_point(module, [*args, "--params", str(path)])
    assert done.returncode != 0
    assert f"{path}: train.lora_r=-4: must be > 0" in done.stderr
    assert done.stdout.strip() == "torch not imported"
    assert seconds < 5


@pytest.mark.parametrize("command", ["stage train", "seed finetune"])
def test_infinite_lr_is_refused_before_any_model_loads(tmp_path: Path, command: str) -> None:
    """`train.lr: .inf` trained 34 of 35 adapter tensors into NaN and exited 0."""
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("lr: 1.0e-4", "lr: .inf"))
    kind, name = command.split()
    module, *args = (ENTRY_POINTS if kind == "stage" else SEED_COMMANDS)[name]
    if kind == "seed":
        args = [arg for arg in args if arg not in ("--lr", "1e-4")]  # the file's value stays
    done, _ = _run_entry_point(module, [*args, "--params", str(path)])
    assert done.returncode != 0
    assert f"{path}: train.lr=inf: must be a finite number" in done.stderr
    assert done.stdout.strip() == "torch not imported"


@pytest.mark.parametrize(("command", "flag", "message"), [
    ("augment", ["--box-threshold", "1.5"], "box_threshold=1.5: must be in [0, 1]"),
    ("augment", ["--batch-size", "0"], "detect.batch_size=0: must be > 0"),
    ("finetune", ["--lora-r", "-4"], "train.lora_r=-4: must be > 0"),
    ("finetune", ["--lora-target", "(q_proj"], "train.lora_target='(q_proj': must be a valid"),
    ("finetune", ["--lr", "inf"], "train.lr=inf: must be a finite number"),
    ("finetune", ["--seed", "1099511627776"], "train.seed=1099511627776: must be in"),
    ("evaluate", ["--num-examples", "-3"], "evaluate.num_examples=-3: must be >= 0"),
    ("evaluate", ["--num-beams", "0"], "evaluate.num_beams=0: must be > 0"),
    # A revision of a local directory: the cwd is the repo, where `src` is a directory.
    ("augment", ["--detector-id", "src", "--detector-revision", "v1"],
     "detector_revision='v1': must be null: detector_id 'src' is a local directory"),
    ("finetune", ["--model-id", "src", "--model-revision", "abc"],
     "model_revision='abc': must be null: model_id 'src' is a local directory"),
    ("evaluate", ["--clip-model-id", "src", "--clip-model-revision", "v1"],
     "clip_model_revision='v1': must be null: clip_model_id 'src' is a local directory"),
])
def test_bad_flag_fails_validation(command: str, flag: list[str], message: str) -> None:
    module, *args = SEED_COMMANDS[command]
    done, _ = _run_entry_point(module, [*args, *flag, "--params", str(REPO / "params.yaml")])
    assert done.returncode != 0
    assert f"command line: {message}" in done.stderr
    assert done.stdout.strip() == "torch not imported"


def test_dvc_yaml_params_exist() -> None:
    keys = set(flat_keys())
    sections = {k.split(".")[0] for k in keys}
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for key in stage.get("params", []):
            assert key in keys or key in sections, f"stage {name}: unknown param {key}"


def test_demo_overrides_exist() -> None:
    overrides = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    assert set(overrides) <= set(flat_keys())
    assert override(load_params(REPO / "params.yaml"), overrides).profile == "demo"


def test_one_caption_prompt_for_training_and_evaluation() -> None:
    """`-S caption_prompt=…` changes the validation captions and evaluation alike."""
    from src.eval.run import EvalConfig
    from src.train.recipe import FinetuneConfig

    params = override(load_params(REPO / "params.yaml"), {"caption_prompt": "Say what you see."})
    evaluation = EvalConfig.from_params(params, adapter_dir=None, images_dir=Path("val2017"),
                                        ann_path=Path("captions.json"))
    assert FinetuneConfig.from_params(params).val_prompt == "Say what you see."
    assert evaluation.caption.prompt == "Say what you see."
