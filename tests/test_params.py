"""params.yaml parses, typos fail at start, and dvc.yaml names only keys that exist."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.params import flat_keys, load_params

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_parses() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.clip_threshold == pytest.approx(0.26)
    assert params.box_threshold == pytest.approx(0.30)
    assert params.train.grad_accum == 16


def test_typo_and_wrong_type_fail(tmp_path: Path) -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["lrr"] = raw["train"].pop("lr")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"train: unknown keys \['lrr'\], missing keys \['lr'\]"):
        load_params(tmp_path / "p.yaml")
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["detect"]["batch_size"] = "eight"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=r"detect\.batch_size: expected int"):
        load_params(tmp_path / "p.yaml")


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
