"""A hub id at a pinned revision: every load of the model (config, processor, weights) reads
that commit's snapshot, in the stages and the shared loaders alike, and the identity each
stage records is that commit.

Offline (HF_HUB_OFFLINE=1) on a hub cache built here as huggingface_hub lays it out
(`models--org--name/refs/<name>`, `snapshots/<commit>/`): two snapshots of a tiny model with
different weights, a tag naming the second, and a main branch whose snapshot is empty, so
that a load which drops the revision fails instead of quietly reading another commit. The
loads run in a child process: huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE once, at
import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from stage_runs import phrase_subset, run_phrases, write_params
from train_fixtures import write_demo_jsonl
from transformers import CLIPModel, LlavaForConditionalGeneration

from src.data.tables import read_metadata
from src.eval.captioner import load_captioner
from src.models.clip import load_clip

REPO = Path(__file__).resolve().parents[1]
C0, C1, C2 = "0" * 40, "1" * 40, "2" * 40  # C0: main, an empty snapshot

LOADS = """
import json, sys
import torch
from src.eval.captioner import load_captioner
from src.models.clip import load_clip
from src.preflight import model_problem

cpu = torch.device("cpu")
@torch.no_grad()
def checksum(model):
    return float(sum(p.double().sum() for p in model.parameters()))
found = {"main": model_problem("org/tiny-llava")}
for revision in sys.argv[1:]:
    clip, _ = load_clip("org/tiny-clip", cpu, revision=revision)
    llava, _ = load_captioner("org/tiny-llava", None, device=cpu, dtype=torch.float32,
                              revision=revision)
    found[revision] = {"clip": checksum(clip), "llava": checksum(llava),
                       "problem": model_problem("org/tiny-llava", revision)}
print(json.dumps(found))
"""


@torch.no_grad()
def _checksum(model: torch.nn.Module) -> float:
    return float(sum(p.double().sum() for p in model.parameters()))


def _hub_repo(cache: Path, repo_id: str, model_dir: Path, model_class: type | None) -> Path:
    """`repo_id` in the hub cache: snapshot C1 = `model_dir`; main -> the empty C0; with
    `model_class`, C2 = the same with every weight of its first parameter plus one, and tag
    v2 -> C2."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, folder / "snapshots" / C1)
    if model_class is not None:
        shutil.copytree(model_dir, folder / "snapshots" / C2)
        model = model_class.from_pretrained(model_dir)
        with torch.no_grad():
            next(model.parameters()).add_(1.0)
        model.save_pretrained(folder / "snapshots" / C2)
        (folder / "refs").mkdir()
        (folder / "refs" / "v2").write_text(C2)
    (folder / "snapshots" / C0).mkdir()
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(C0)
    return folder


@pytest.fixture(scope="module")
def hub(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("hub")
    _hub_repo(cache, "org/tiny-clip", tiny_models["clip"], CLIPModel)
    _hub_repo(cache, "org/tiny-llava", tiny_models["llava"], LlavaForConditionalGeneration)
    _hub_repo(cache, "org/tiny-gdino", tiny_models["grounding-dino"], None)
    return cache


def _offline(hub: Path, *command: str) -> tuple[str, str]:
    """The child's stdout and stderr (its log)."""
    done = subprocess.run([sys.executable, *command], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False,
                          env={**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1",
                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


def test_the_revision_picks_the_snapshot_every_loader_reads(hub: Path) -> None:
    found = json.loads(_offline(hub, "-c", LOADS, C1, C2, "v2")[0])
    cpu = torch.device("cpu")
    for commit in (C1, C2):
        clip = load_clip(str(hub / "models--org--tiny-clip" / "snapshots" / commit), cpu)[0]
        llava = load_captioner(str(hub / "models--org--tiny-llava" / "snapshots" / commit), None,
                               device=cpu, dtype=torch.float32)[0]
        assert found[commit]["clip"] == pytest.approx(_checksum(clip), abs=0, rel=1e-12)
        assert found[commit]["llava"] == pytest.approx(_checksum(llava), abs=0, rel=1e-12)
        assert found[commit]["problem"] is None
    assert found[C1]["clip"] != found[C2]["clip"]
    assert found[C1]["llava"] != found[C2]["llava"]
    assert found["v2"] == found[C2]  # the tag's ref names C2
    assert "org/tiny-llava" in found["main"]  # unpinned: main's snapshot is empty


def test_the_stages_load_and_record_the_pinned_commit(
        hub: Path, demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """detect at a pinned commit, clip_score at a tag: each loads that snapshot (main's is
    empty) and records the commit it resolved to in its stats."""
    params = write_params(tmp_path / "params.yaml", tiny_models,
                          detector_id="org/tiny-gdino", detector_revision=C1,
                          clip_model_id="org/tiny-clip", clip_model_revision="v2")
    run_phrases(demo_coco, tmp_path, params)
    subset = phrase_subset(tmp_path, [1, 2, 3], "few")
    detections, regions = tmp_path / "detections.parquet", tmp_path / "regions.parquet"
    _, log = _offline(hub, "-m", "src.augment.detect", "--phrases", str(tmp_path / subset),
                   "--coco-root", str(demo_coco), "--shards-dir", str(tmp_path / "d_shards"),
                   "--out", str(detections), "--params", str(params), "--device", "cpu")
    log += _offline(hub, "-m", "src.augment.clip_score", "--detections", str(detections),
                    "--coco-root", str(demo_coco), "--shards-dir", str(tmp_path / "c_shards"),
                    "--out", str(regions), "--params", str(params), "--device", "cpu")[1]
    metadata = read_metadata(regions)
    assert metadata["detect"]["model"] == f"hub:org/tiny-gdino@{C1}"
    assert metadata["clip_score"]["model"] == f"hub:org/tiny-clip@{C2}"
    assert metadata["detect"]["candidates"] > 0
    assert "unpinned" not in log  # both are pinned: nothing to advise


@pytest.mark.slow
def test_the_seed_commands_train_and_evaluate_at_their_revision_flags(
        hub: Path, demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """`--model-revision` and `--clip-model-revision` reach every load of training and
    evaluation (main's snapshot is empty), and the metrics name the commits."""
    params = write_params(tmp_path / "params.yaml", tiny_models, **{
        "train.image_size": 32, "train.max_length": 128, "train.val_examples": 4,
        "train.bsz": 2, "train.batch_size": 2, "train.num_workers": 0})
    write_demo_jsonl(demo_coco, tmp_path / "train.jsonl", regions=False, captions_per_image=1)
    _offline(hub, "-m", "src.train.finetune_llava", "--train-file", str(tmp_path / "train.jsonl"),
             "--val-ann", str(demo_coco / "annotations" / "captions_val2017.json"),
             "--val-images", str(demo_coco / "val2017"), "--output-dir", str(tmp_path / "lora"),
             "--metrics", str(tmp_path / "train.json"), "--max-steps", "1",
             "--model-id", "org/tiny-llava", "--model-revision", C2, "--params", str(params))
    _offline(hub, "-m", "src.eval.evaluate_coco", "--model", str(tmp_path / "lora"),
             "--images", str(demo_coco / "val2017"),
             "--ann", str(demo_coco / "annotations" / "captions_val2017.json"),
             "--model-id", "org/tiny-llava", "--model-revision", C2,
             "--clip-model-id", "org/tiny-clip", "--clip-model-revision", "v2",
             "--num-examples", "2", "--max-new-tokens", "4", "--no-meteor",
             "--out", str(tmp_path / "metrics.json"),
             "--predictions", str(tmp_path / "predictions.json"), "--params", str(params))
    trained = json.loads((tmp_path / "train.json").read_text())
    evaluated = json.loads((tmp_path / "metrics.json").read_text())
    assert trained["model"] == evaluated["model"] == f"hub:org/tiny-llava@{C2}"
    assert evaluated["clip_model"] == f"hub:org/tiny-clip@{C2}"
    assert evaluated["clipscore"] is not None and evaluated["n_images"] == 2
