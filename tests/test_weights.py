"""A model param's identity: a local directory by its files' content, hashed once per
(path, size, mtime); a hub id by the commit the local hub cache resolves it to."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from stage_runs import phrase_subset, run_detect, run_phrases, write_params
from transformers import GroundingDinoForObjectDetection

import src.models.weights as weights
from src.models.weights import directory_digest, hub_commit, model_identity

C1, C2 = "1" * 40, "2" * 40


@pytest.fixture(autouse=True)
def private_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("HF_HOME", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files whose bytes were read, in order."""
    seen: list[str] = []
    real = weights.file_digest

    def counting(path: Path) -> str:
        seen.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(weights, "file_digest", counting)
    return seen


def _model_dir(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "model.safetensors").write_bytes(b"\x00\x01weights")
    (root / "sub" / "tokenizer.json").write_text("{}")
    return root


def test_a_directory_digest_is_the_hand_computed_one(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m")
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in
           [("config.json", b'{"a": 1}'), ("model.safetensors", b"\x00\x01weights"),
            ("sub/tokenizer.json", b"{}")]}
    lines = "".join(f"{name}\0{sha[name]}\n" for name in sorted(sha))
    expected = hashlib.sha256(lines.encode()).hexdigest()
    assert directory_digest(model) == expected
    assert model_identity(model) == f"dir:{expected}"
    assert model_identity(str(model)) == f"dir:{expected}"


def test_a_directory_is_identified_by_content_not_place(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m")
    base = model_identity(model)
    assert model_identity(shutil.copytree(model, tmp_path / "copy")) == base

    (model / "model.safetensors").write_bytes(b"\x00\x02weights")  # same size, new bytes
    changed = model_identity(model)
    assert changed != base
    (model / "model.safetensors").rename(model / "other.safetensors")
    assert model_identity(model) not in {base, changed}


def test_weights_are_read_once_per_content(tmp_path: Path, reads: list[str]) -> None:
    model = _model_dir(tmp_path / "m")
    base = model_identity(model)
    assert sorted(reads) == ["config.json", "model.safetensors", "tokenizer.json"]
    reads.clear()
    assert model_identity(model) == base
    assert reads == []  # a second start reads nothing

    weights_file = model / "model.safetensors"
    stat = weights_file.stat()
    weights_file.write_bytes(b"\x00\x03weights")
    os.utime(weights_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert model_identity(model) != base
    assert reads == ["model.safetensors"]  # only the file whose mtime moved


def test_same_size_and_mtime_is_taken_as_unchanged_as_dvc_does(tmp_path: Path) -> None:
    model = _model_dir(tmp_path / "m")
    base = model_identity(model)
    weights_file = model / "model.safetensors"
    stat = weights_file.stat()
    weights_file.write_bytes(b"\x00\x04weights")
    os.utime(weights_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert model_identity(model) == base


def test_the_cache_is_shared_by_every_copy_of_the_repo(
        tmp_path: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """It lives in the user's cache directory, not in the repo, so a `dvc exp run --temp`
    copy reading the same weights folder hits it."""
    model = _model_dir(tmp_path / "weights")
    for repo in ("repo", "repo-temp-copy"):
        (tmp_path / repo).mkdir()
        monkeypatch.chdir(tmp_path / repo)
        model_identity(os.path.relpath(model))
    assert len(reads) == 3
    assert (tmp_path / "xdg" / "grounded-captioning" / "file-digests.sqlite").is_file()
    assert not list((tmp_path / "repo").iterdir())


def _hub_model(root: Path, repo_id: str, refs: dict[str, str]) -> Path:
    folder = root / f"models--{repo_id.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    for ref, commit in refs.items():
        (folder / "refs" / ref).write_text(commit)
        (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (folder / "snapshots" / commit / "config.json").write_text("{}")
    return folder


def test_a_hub_id_is_the_commit_its_main_branch_resolves_to(tmp_path: Path,
                                                         reads: list[str]) -> None:
    folder = _hub_model(tmp_path / "hub", "org/name", {"main": C1})
    assert model_identity("org/name") == f"hub:org/name@{C1}"

    (folder / "snapshots" / C2).mkdir()  # the hub branch moved, and was fetched
    (folder / "refs" / "main").write_text(C2)
    assert model_identity("org/name") == f"hub:org/name@{C2}"
    assert reads == []  # no weights read for a hub id


def test_the_hub_cache_is_found_as_huggingface_hub_finds_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_CACHE")
    _hub_model(tmp_path / "xdg" / "huggingface" / "hub", "org/name", {"main": C1})
    assert hub_commit("org/name") == C1  # XDG_CACHE_HOME/huggingface/hub
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    _hub_model(tmp_path / "hf" / "hub", "org/name", {"main": C2})
    assert hub_commit("org/name") == C2
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "hub"))
    _hub_model(tmp_path / "hub", "org/name", {"main": C1})
    assert hub_commit("org/name") == C1


@pytest.mark.parametrize("refs", [{}, {"main": "not-a-commit"}])
def test_an_unresolvable_hub_id_names_the_model(tmp_path: Path, refs: dict[str, str]) -> None:
    _hub_model(tmp_path / "hub", "org/name", refs)
    with pytest.raises(OSError, match=r"'org/name' at revision 'main' is not in the hub cache"):
        model_identity("org/name")


def test_a_revision_picks_the_commit(tmp_path: Path) -> None:
    """A pinned commit is itself; a branch or tag is the commit its cached ref names."""
    folder = _hub_model(tmp_path / "hub", "org/name", {"main": C1, "v2": C2})
    assert model_identity("org/name", C2) == f"hub:org/name@{C2}"
    assert model_identity("org/name", "v2") == f"hub:org/name@{C2}"
    assert model_identity("org/name", C1) == model_identity("org/name") == f"hub:org/name@{C1}"
    (folder / "refs" / "main").write_text(C2)  # main moved: a pinned commit did not
    assert model_identity("org/name", C1) == f"hub:org/name@{C1}"
    assert model_identity("org/name") == f"hub:org/name@{C2}"
    for missing in ("3" * 40, "v3"):
        with pytest.raises(OSError, match=f"at revision '{missing}' is not in the hub cache"):
            model_identity("org/name", missing)


def test_an_unpinned_hub_id_logs_how_to_pin_it(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    _hub_model(tmp_path / "hub", "org/name", {"main": C1})
    with caplog.at_level("INFO", logger="src.models.weights"):
        model_identity("org/name", C1, param="model")
        assert caplog.messages == []
        model_identity("org/name", param="model")
    assert caplog.messages == [f"org/name is unpinned: loaded its main branch at commit {C1}; "
                               f"pin it with `dvc exp run -S model_revision={C1}`"]


def test_a_local_directory_has_no_revision(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local directory: it has no revision"):
        model_identity(_model_dir(tmp_path / "m"), C1)


def test_a_ref_to_a_missing_snapshot_is_refused(tmp_path: Path) -> None:
    folder = _hub_model(tmp_path / "hub", "org/name", {"main": C1})
    shutil.rmtree(folder / "snapshots" / C1)
    with pytest.raises(OSError, match="not in the hub cache"):
        hub_commit("org/name")


def _shards(folder: Path) -> set[str]:
    return {path.name for path in folder.glob("shard-*.parquet")}


def test_detect_redoes_its_shards_when_the_weights_behind_its_path_change(
        demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path,
        reads: list[str]) -> None:
    """The resume fingerprint follows the weights' content, not the path, and a start with
    unchanged weights reads none of them to know it."""
    detector = shutil.copytree(tiny_models["grounding-dino"], tmp_path / "detector")
    params = write_params(tmp_path / "params.yaml", {**tiny_models, "grounding-dino": detector})
    run_phrases(demo_coco, tmp_path, params)
    subset = phrase_subset(tmp_path, [1, 2, 3], "few")
    run_detect(demo_coco, tmp_path, params, "d", subset)
    first = _shards(tmp_path / "d_shards")
    assert first and "model.safetensors" in reads

    reads.clear()
    run_detect(demo_coco, tmp_path, params, "d", subset)
    assert _shards(tmp_path / "d_shards") == first
    assert reads == []

    model = GroundingDinoForObjectDetection.from_pretrained(detector)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    model.save_pretrained(detector)  # retrained, same path
    run_detect(demo_coco, tmp_path, params, "d", subset)
    assert _shards(tmp_path / "d_shards").isdisjoint(first)
