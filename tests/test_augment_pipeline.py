"""The augmentation stages end to end on demo data with tiny models: detect, clip_score,
assemble, resume, skips, data parallelism, the seed command and DVC's re-run behaviour."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from library_helpers import paired_cosine
from stage_runs import (
    copy_working_tree,
    phrase_subset,
    run_assemble,
    run_clip,
    run_detect,
    run_phrases,
    write_params,
)
from transformers import GroundingDinoForObjectDetection

from src.augment.grounding import DETECTION_COLUMNS
from src.data import shard_map
from src.data.coco import resolve_image_path
from src.data.images import crop_box, load_rgb
from src.data.jsonl import read_examples
from src.data.tables import read_table
from src.models.clip import load_clip
from src.models.weights import directory_digest

REPO = Path(__file__).resolve().parents[1]
NUM_QUERIES = 30  # the tiny GroundingDINO's object queries


@pytest.fixture(scope="module")
def work(demo_coco: Path, tiny_models: dict[str, Path],
         tmp_path_factory: pytest.TempPathFactory) -> Path:
    """phrases -> detect (2 DataLoader workers) -> clip_score on the demo images."""
    work = tmp_path_factory.mktemp("augment")
    params = write_params(work / "params.yaml", tiny_models, **{"detect.num_workers": 2,
                                                                "clip_score.batch_size": 7})
    run_phrases(demo_coco, work, params)
    run_clip(demo_coco, run_detect(demo_coco, work, params), params, work / "regions.parquet")
    return work


def test_detections_schema_clamped_boxes_and_floor(work: Path, demo_coco: Path,
                                                  tiny_models: dict[str, Path]) -> None:
    frame, metadata = read_table(work / "detections.parquet")
    assert tuple(frame.columns) == DETECTION_COLUMNS
    assert len(frame) == metadata["detect"]["candidates"] > 0
    assert (frame["box_score"] >= 0.15).all() and (frame["phrase_score"] >= 0.15).all()
    assert (frame["box_x0"] >= 0).all() and (frame["box_y0"] >= 0).all()
    assert (frame["box_x1"] <= frame["width"]).all() and (frame["box_y1"] <= frame["height"]).all()
    assert (frame["box_x0"] <= frame["box_x1"]).all() and (frame["box_y0"] <= frame["box_y1"]).all()
    assert ((frame["box_x0"] == 0) | (frame["box_x1"] == frame["width"])).any()  # some clamped
    images = json.loads((demo_coco / "annotations" / "captions_train2017.json").read_text())
    sizes = {i["id"]: (i["width"], i["height"]) for i in images["images"]}
    assert all(sizes[r.image_id] == (r.width, r.height) for r in frame.itertuples())
    phrase_table = pd.read_parquet(work / "phrases.parquet")
    stats = metadata["detect"]
    assert (stats["images"], stats["queries"], stats["phrases"], stats["skipped"]) == (
        phrase_table["image_id"].nunique(), phrase_table["image_id"].nunique(),
        len(phrase_table), {})
    assert stats["images_no_detections"] == stats["images"] - frame["image_id"].nunique()
    assert stats["model"] == f"dir:{directory_digest(tiny_models['grounding-dino'])}"


def test_floor_keeps_exactly_the_candidates_above_it(work: Path, demo_coco: Path,
                                                     tiny_models: dict[str, Path]) -> None:
    params = write_params(work / "floor0.yaml", tiny_models, **{"detect.floor_score": 0.0})
    everything, _ = read_table(run_detect(demo_coco, work, params, "floor0"))
    phrase_table = pd.read_parquet(work / "phrases.parquet")
    assert len(everything) == NUM_QUERIES * len(phrase_table)  # every (box, phrase) pair
    at_floor = everything[(everything["box_score"] >= np.float32(0.15))
                          & (everything["phrase_score"] >= np.float32(0.15))]
    pd.testing.assert_frame_equal(at_floor.reset_index(drop=True),
                                  read_table(work / "detections.parquet")[0])


def test_long_prompts_run_in_several_passes(work: Path, demo_coco: Path,
                                            tiny_models: dict[str, Path]) -> None:
    small = work / "gdino_text8"
    shutil.copytree(tiny_models["grounding-dino"], small)
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "max_text_len": 8}))
    params = write_params(work / "text8.yaml", {**tiny_models, "grounding-dino": small},
                          **{"detect.floor_score": 0.0})
    counts = pd.read_parquet(work / "phrases.parquet").groupby("image_id").size()
    subset = phrase_subset(work, counts[counts >= 3].index[:4].tolist(), "phrases_text8")
    frame, metadata = read_table(run_detect(demo_coco, work, params, "text8", subset))
    phrase_table = pd.read_parquet(work / subset)
    # 8 tokens hold [CLS], [SEP] and one 3-word phrase with its ".", never two: one pass each.
    assert metadata["detect"]["queries"] == len(phrase_table)
    assert len(frame) == NUM_QUERIES * len(phrase_table)  # no phrase lost to truncation
    per_phrase = frame.groupby(["image_id", "phrase_index"])["pass_index"].agg(["min", "max"])
    assert (per_phrase["min"] == per_phrase["max"]).all()
    assert (per_phrase["min"] == per_phrase.index.get_level_values("phrase_index")).all()
    assert frame["pass_index"].max() >= 2


FORWARD = GroundingDinoForObjectDetection.forward
WRITE_SHARD = shard_map.write_shard


def _count_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def counting(self, *args, **kwargs):
        calls.append(1)
        return FORWARD(self, *args, **kwargs)

    monkeypatch.setattr(GroundingDinoForObjectDetection, "forward", counting)
    return calls


def _kill_after_shards(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    written: list[Path] = []

    def write_then_die(*args, **kwargs) -> Path:
        written.append(WRITE_SHARD(*args, **kwargs))
        if len(written) == count:
            raise KeyboardInterrupt("simulated kill")
        return written[-1]

    monkeypatch.setattr(shard_map, "write_shard", write_then_die)


def test_resume_keeps_finished_shards(work: Path, demo_coco: Path, tiny_models: dict[str, Path],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # 13 images in shards of 4: kill after 2 of the 4 shards.
    subset = phrase_subset(work, list(range(1, 14)), "phrases_resume")
    params = write_params(work / "resume.yaml", tiny_models,
                          **{"detect.shard_size": 4, "detect.batch_size": 2})
    full = _count_forwards(monkeypatch)
    uninterrupted = run_detect(demo_coco, work, params, "uninterrupted", subset)

    first = _count_forwards(monkeypatch)
    _kill_after_shards(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        run_detect(demo_coco, work, params, "resume", subset)
    assert len(list((work / "resume_shards").glob("shard-*.parquet"))) == 2
    monkeypatch.setattr(shard_map, "write_shard", WRITE_SHARD)
    second = _count_forwards(monkeypatch)
    resumed = run_detect(demo_coco, work, params, "resume", subset)
    assert 0 < len(second) < len(full)
    assert len(first) + len(second) == len(full)  # nothing recomputed
    pd.testing.assert_frame_equal(read_table(resumed)[0], read_table(uninterrupted)[0])
    assert read_table(resumed)[1] == read_table(uninterrupted)[1]

    # Execution knobs never invalidate finished work: other shard and batch sizes reuse all.
    reused = _count_forwards(monkeypatch)
    run_detect(demo_coco, work, write_params(work / "resume_knobs.yaml", tiny_models, **{
        "detect.shard_size": 3, "detect.batch_size": 5, "detect.num_workers": 1}), "resume",
        subset)
    assert reused == []
    pd.testing.assert_frame_equal(read_table(resumed)[0], read_table(uninterrupted)[0])

    # Shards of another run (here another floor score) are redone, not reused.
    again = _count_forwards(monkeypatch)
    run_detect(demo_coco, work, write_params(work / "resume2.yaml", tiny_models, **{
        "detect.shard_size": 4, "detect.batch_size": 2, "detect.floor_score": 0.2}), "resume",
        subset)
    assert len(again) == len(full)


def test_rows_do_not_depend_on_batching(work: Path, demo_coco: Path,
                                        tiny_models: dict[str, Path]) -> None:
    image_ids = list(range(1, 25, 2))
    params = write_params(work / "batch2.yaml", tiny_models,
                          **{"detect.batch_size": 3, "detect.shard_size": 5})
    other, _ = read_table(run_detect(demo_coco, work, params, "batch3",
                                     phrase_subset(work, image_ids, "phrases_odd")))
    batched, _ = read_table(work / "detections.parquet")  # all images, batches of 4, shards of 8
    batched = batched[batched["image_id"].isin(image_ids)].reset_index(drop=True)
    pd.testing.assert_frame_equal(other, batched, check_exact=False, atol=1e-4)


@pytest.mark.slow
def test_two_processes_give_the_rows_of_one(work: Path, demo_coco: Path,
                                            tiny_models: dict[str, Path]) -> None:
    params = write_params(work / "ddp.yaml", tiny_models, **{"detect.shard_size": 3})
    out = work / "ddp.parquet"
    command = [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
               "--num_processes", "2", "--main_process_port", "29517", "-m", "src.augment.detect",
               "--phrases", str(work / "phrases.parquet"), "--coco-root", str(demo_coco),
               "--shards-dir", str(work / "ddp_shards"), "--out", str(out),
               "--params", str(params), "--device", "cpu"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "on this process of 2" in done.stderr
    two = read_table(out)
    one = read_table(run_detect(demo_coco, work, params, "one_process"))
    pd.testing.assert_frame_equal(two[0], one[0])
    assert two[1] == one[1]


def test_regions_are_scored_crops_of_big_enough_boxes(work: Path, demo_coco: Path,
                                                      tiny_models: dict[str, Path]) -> None:
    detections, _ = read_table(work / "detections.parquet")
    regions, metadata = read_table(work / "regions.parquet")
    area = (detections["box_x1"] - detections["box_x0"]) * (detections["box_y1"] -
                                                            detections["box_y0"])
    big = detections[(area > 0) & (area >= 0.02 * detections["width"] * detections["height"])]
    pd.testing.assert_frame_equal(regions[list(DETECTION_COLUMNS)], big.reset_index(drop=True))
    assert (regions["caption"] == regions["phrase"]).all()  # caption_template "{phrase}"
    assert metadata["clip_score"] == {"candidates_in": len(detections), "regions": len(regions),
                                      "small_boxes": len(detections) - len(big), "unscored": 0,
                                      "skipped": {},
                                      "model": f"dir:{directory_digest(tiny_models['clip'])}"}
    # Batches of 7 crops regrouped across images give what CLIP says of each crop alone.
    model, processor = load_clip(str(tiny_models["clip"]), torch.device("cpu"))
    for row in regions.iloc[[0, 6, 7, len(regions) - 1]].itertuples():
        image = load_rgb(resolve_image_path(demo_coco / "train2017", row.file_name))
        crop = crop_box(image, (row.box_x0, row.box_y0, row.box_x1, row.box_y1), 0.1)
        assert paired_cosine(model, processor, [crop], [row.caption]).item() == pytest.approx(
            row.clip_score, abs=1e-5)


def test_assemble_writes_a_valid_reproducible_jsonl(work: Path, demo_coco: Path,
                                                    tiny_models: dict[str, Path]) -> None:
    params = write_params(work / "assemble.yaml", tiny_models, clip_threshold=-1.0,
                          **{"assemble.max_region_ratio": 0.5})
    first = run_assemble(demo_coco, work, work / "regions.parquet", params, "first")
    second = run_assemble(demo_coco, work, work / "regions.parquet", params, "second")
    for name in ("train.jsonl", "augment.json", "plots/threshold_sweep.csv", "plots/gallery.png"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    examples, malformed = read_examples(first / "train.jsonl")
    metrics = json.loads((first / "augment.json").read_text())
    captions = pd.read_parquet(work / "captions.parquet")
    assert malformed == 0
    assert metrics["full_examples"] == len(captions) == sum(e.kind == "full" for e in examples)
    assert metrics["region_examples"] == sum(e.kind == "region" for e in examples) == \
        min(metrics["regions_kept"], len(captions) // 2) > 0
    assert all(e.image.startswith("train2017/") for e in examples)
    assert all(v == int(v) or k == "keep_rate" for k, v in metrics.items())  # flat numbers
    sweep = (first / "plots" / "threshold_sweep.csv").read_text().splitlines()
    assert sweep[0] == "clip_threshold,regions_kept" and len(sweep) > 2


def test_unreadable_images_are_counted_and_left_out(demo_coco: Path, tiny_models: dict[str, Path],
                                                    tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(demo_coco, coco)
    (coco / "train2017" / "000000000003.jpg").unlink()
    truncated = coco / "train2017" / "000000000005.jpg"
    truncated.write_bytes(truncated.read_bytes()[:600])
    params = write_params(tmp_path / "params.yaml", tiny_models, clip_threshold=-1.0,
                          **{"detect.num_workers": 2})
    run_phrases(coco, tmp_path, params)
    detections = run_detect(coco, tmp_path, params)
    frame, metadata = read_table(detections)
    assert metadata["detect"]["skipped"] == {"missing": [3], "truncated": [5]}
    assert not frame["image_id"].isin([3, 5]).any()
    out = run_assemble(coco, tmp_path, run_clip(coco, detections, params,
                                                tmp_path / "regions.parquet"), params, "out")
    metrics = json.loads((out / "augment.json").read_text())
    assert (metrics["images_skipped"], metrics["images_skipped_missing"],
            metrics["images_skipped_truncated"]) == (2, 1, 1)
    examples, _ = read_examples(out / "train.jsonl")
    assert not {e.image for e in examples} & {"train2017/000000000003.jpg",
                                               "train2017/000000000005.jpg"}


def test_seed_command_on_real_coco_photos(coco_mini: Path, tiny_models: dict[str, Path],
                                          tmp_path: Path) -> None:
    from src.augment import augment_gdino_clip

    out = tmp_path / "seed" / "train.jsonl"
    augment_gdino_clip.main([
        "--coco-root", str(coco_mini), "--split", "train", "--out", str(out),
        "--max-images", "6", "--box-threshold", "0.3", "--text-threshold", "0.25",
        "--clip-threshold", "-1", "--detector-id", str(tiny_models["grounding-dino"]),
        "--clip-model-id", str(tiny_models["clip"]), "--batch-size", "3", "--device", "cpu"])
    examples, _ = read_examples(out)
    stats = json.loads(out.with_suffix(".stats.json").read_text())
    assert len({e.image for e in examples}) == stats["images"] == 6
    assert stats["full_examples"] == sum(e.kind == "full" for e in examples) >= 30
    assert stats["region_examples"] == sum(e.kind == "region" for e in examples) > 0
    assert all((coco_mini / e.image).is_file() for e in examples)
    used = yaml.safe_load((tmp_path / "seed" / "train_work" / "params.yaml").read_text())
    assert (used["max_images"], used["clip_threshold"], used["detect"]["batch_size"]) == (6, -1, 3)


def _dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{repo / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(repo / ".venv" / "bin" / "dvc"), *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout + done.stderr


def _set_params(repo: Path, **values: object) -> None:
    path = repo / "params.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in values.items():
        *parents, leaf = key.split(".")
        node = raw
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")


@pytest.mark.slow
def test_dvc_threshold_changes_rerun_only_assemble(tmp_path: Path) -> None:
    repo = copy_working_tree(tmp_path / "repo")
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    _set_params(repo, **demo, **{"demo.num_train": 12, "demo.num_val": 2,
                                 "detect.num_workers": 0})
    subprocess.run("git init -q && git add -A && git -c user.name=t -c user.email=t@t "
                   "commit -qm t", shell=True, cwd=repo, check=True)

    first = _dvc(repo, "repro", "assemble")
    for stage in ("demo", "phrases", "detect", "clip_score", "assemble"):
        assert f"Running stage '{stage}'" in first
    assert json.loads((repo / "metrics" / "augment.json").read_text())["images"] == 12

    for change in ({"clip_threshold": 0.1}, {"box_threshold": 0.5}, {"text_threshold": 0.5}):
        _set_params(repo, **change)
        status = _dvc(repo, "status")
        assert "assemble:" in status
        assert "detect:" not in status and "clip_score:" not in status
        rerun = _dvc(repo, "repro", "assemble")
        assert "Running stage 'assemble'" in rerun
        for stage in ("demo", "phrases", "detect", "clip_score"):
            assert f"Running stage '{stage}'" not in rerun
