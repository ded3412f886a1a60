"""clip_score on the resumable map: a `kill -9` loses only the shards in flight, execution
knobs reuse finished images, two processes give the table of one, and CLIP's text tower
runs once per distinct caption."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image
from stage_runs import run_clip, run_detect, run_phrases, write_params

from src.augment import regions as regions_module
from src.augment.regions import drop_small_boxes
from src.data.shard_map import finished_items
from src.data.tables import read_metadata, read_table
from src.models import clip
from src.models.clip import embed_texts, image_pixels, load_clip, paired_cosine_pixels

REPO = Path(__file__).resolve().parents[1]
PAIRED_COSINE = regions_module.paired_cosine_pixels


@pytest.fixture(scope="module")
def detections(demo_coco: Path, tiny_models: dict[str, Path],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("clip_resume")
    params = write_params(work / "params.yaml", tiny_models)
    run_phrases(demo_coco, work, params)
    return run_detect(demo_coco, work, params)


def _count_crops(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Crops scored by clip_score from now on, one entry per CLIP forward."""
    scored: list[int] = []

    def counting(model, processor, pixels, texts):
        scored.append(len(texts))
        return PAIRED_COSINE(model, processor, pixels, texts)

    monkeypatch.setattr(regions_module, "paired_cosine_pixels", counting)
    return scored


def _runs(shards: Path) -> set[str]:
    return {read_metadata(path)["manifest"]["run"] for path in shards.glob("shard-*.parquet")}


def _crops_per_image(detections: Path) -> pd.Series:
    return drop_small_boxes(read_table(detections)[0], 0.02).groupby("image_id").size()


# Runs clip_score.main with each CLIP forward slowed down, so that the test can kill it
# between two shards; the stage's code is otherwise untouched.
SLOW_RUN = """
import sys, time
from src.augment import clip_score, regions
score = regions.paired_cosine_pixels
def slow(*args):
    time.sleep(0.2)
    return score(*args)
regions.paired_cosine_pixels = slow
clip_score.main(sys.argv[1:])
"""


def test_kill_9_then_rerun_equals_an_uninterrupted_run(
        detections: Path, demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    params = write_params(tmp_path / "params.yaml", tiny_models, **{
        "clip_score.shard_size": 2, "clip_score.batch_size": 3})
    crops = _crops_per_image(detections)
    full = _count_crops(monkeypatch)
    uninterrupted = run_clip(demo_coco, detections, params, tmp_path / "uninterrupted.parquet")
    assert sum(full) == crops.sum()

    out, shards = tmp_path / "resumed.parquet", tmp_path / "resumed.shards"
    killed = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, "--detections", str(detections), "--coco-root",
         str(demo_coco), "--shards-dir", str(shards), "--out", str(out), "--params",
         str(params), "--device", "cpu"],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(shards.glob("shard-*.parquet"))) < 2 and time.monotonic() < deadline:
        assert killed.poll() is None, "clip_score ended before it could be killed"
        time.sleep(0.01)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    assert not out.exists()
    finished = {image for run in _runs(shards) for image, _ in finished_items(shards, run)}
    assert 2 <= len(finished) < len(crops)  # shards of 2 images: killed mid-run

    rerun = _count_crops(monkeypatch)
    run_clip(demo_coco, detections, params, out)
    assert sum(rerun) == crops.drop(sorted(finished)).sum()  # finished images not rescored
    pd.testing.assert_frame_equal(read_table(out)[0], read_table(uninterrupted)[0])
    assert read_table(out)[1] == read_table(uninterrupted)[1]

    # Execution knobs reuse every finished image; an output-changing param reuses none.
    knobs = write_params(tmp_path / "knobs.yaml", tiny_models, **{
        "clip_score.shard_size": 5, "clip_score.batch_size": 4, "clip_score.num_workers": 1})
    again = _count_crops(monkeypatch)
    run_clip(demo_coco, detections, knobs, out)
    assert again == []
    pd.testing.assert_frame_equal(read_table(out)[0], read_table(uninterrupted)[0])
    padded = write_params(tmp_path / "pad.yaml", tiny_models, **{"clip_score.crop_pad_frac": 0.3})
    redone = _count_crops(monkeypatch)
    run_clip(demo_coco, detections, padded, out)
    assert sum(redone) == crops.sum()
    assert len(_runs(shards)) == 1  # the stale shards are removed


@pytest.mark.slow
def test_two_processes_give_the_table_of_one(detections: Path, demo_coco: Path,
                                             tiny_models: dict[str, Path],
                                             tmp_path: Path) -> None:
    params = write_params(tmp_path / "params.yaml", tiny_models, **{
        "clip_score.shard_size": 3, "clip_score.batch_size": 5, "launch.num_processes": 2})
    out = tmp_path / "two.parquet"
    # Through the launcher, as dvc.yaml runs the stage: it reads launch.num_processes.
    command = [sys.executable, "-m", "src.launch", "src.augment.clip_score",
               "--detections", str(detections),
               "--coco-root", str(demo_coco), "--shards-dir", str(tmp_path / "two_shards"),
               "--out", str(out), "--params", str(params), "--device", "cpu"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on this process of 2" in done.stderr
    two = read_table(out)
    one = read_table(run_clip(demo_coco, detections, write_params(
        tmp_path / "one.yaml", tiny_models, **{"clip_score.shard_size": 3,
                                               "clip_score.batch_size": 5}),
        tmp_path / "one.parquet"))
    pd.testing.assert_frame_equal(two[0], one[0])
    assert two[1] == one[1]


def test_text_tower_runs_once_per_distinct_caption(tiny_models: dict[str, Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    model, processor = load_clip(str(tiny_models["clip"]), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    pixels = image_pixels(processor, [
        Image.fromarray(torch.randint(0, 256, (40, 30, 3), generator=generator,
                                      dtype=torch.uint8).numpy()) for _ in range(5)])
    texts = ["a red square", "a blue circle", "a red square", "a red square", "a blue circle"]
    expected = (clip.embed_pixels(model, pixels) * embed_texts(model, processor, texts)).sum(-1)
    encoded: list[list[str]] = []

    def recording(model, processor, batch):
        encoded.append(list(batch))
        return embed_texts(model, processor, batch)

    monkeypatch.setattr(clip, "embed_texts", recording)
    scores = paired_cosine_pixels(model, processor, pixels, texts)
    assert encoded == [["a red square", "a blue circle"]]
    torch.testing.assert_close(scores, expected, rtol=0, atol=1e-6)
