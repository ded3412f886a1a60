"""The bad-input matrix: every stage and seed command on one COCO-style set holding every bad
kind (a path escaping the root, missing, zero-byte, truncated, not an image, decompression
bomb) in train and val. Each bad image is counted once with its reason, nothing outside
the image root is opened, and every good image is used."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image
from stage_runs import run_assemble, run_clip, run_detect, run_phrases, write_params
from train_fixtures import write_demo_jsonl

from src.augment import augment_gdino_clip
from src.data.jsonl import read_examples
from src.data.tables import read_table
from src.demo.synthetic_coco import write_demo
from src.eval import evaluate_coco
from src.train import finetune_llava

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ESCAPE = "../../../etc/passwd"  # from <base>/jail/coco/<split>2017 this is <base>/etc/passwd
BAD_FILES = {"path_escape": ESCAPE, "missing": "missing.jpg", "empty": "empty.jpg",
             "truncated": "truncated.jpg", "not_an_image": "notes.jpg",
             "decompression_bomb": "bomb.png"}
ONE_EACH = dict.fromkeys(sorted(BAD_FILES), 1)

_opened: list[str] = []
_watching: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if _watching and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        _opened.append(os.path.abspath(os.fsdecode(args[0])))


sys.addaudithook(_audit)  # audit hooks cannot be removed: it records only while watching


def _add_bad_images(coco: Path, split: str, first_id: int) -> tuple[dict[str, int], set[int]]:
    """One annotated image of each bad kind, captioned like the first good one; returns
    {reason: image id} and the good image ids."""
    ann_path = coco / "annotations" / f"captions_{split}2017.json"
    ann = json.loads(ann_path.read_text())
    image_dir = coco / f"{split}2017"
    good = ann["images"][0]
    jpeg = (image_dir / good["file_name"]).read_bytes()
    (image_dir / "empty.jpg").write_bytes(b"")
    (image_dir / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 2])
    (image_dir / "notes.jpg").write_text("not an image\n")
    Image.new("1", (10_000, 10_000)).save(image_dir / "bomb.png")  # 1e8 px in a few kB
    captions = [a["caption"] for a in ann["annotations"] if a["image_id"] == good["id"]]
    good_ids = {image["id"] for image in ann["images"]}
    bad = {}
    for offset, (reason, file_name) in enumerate(BAD_FILES.items()):
        bad[reason] = first_id + offset
        ann["images"].append({**good, "id": bad[reason], "file_name": file_name})
        ann["annotations"] += [{"id": bad[reason] * 100 + k, "image_id": bad[reason],
                                "caption": caption} for k, caption in enumerate(captions)]
    ann_path.write_text(json.dumps(ann))
    return bad, good_ids


@pytest.fixture(scope="module")
def bad_coco(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A demo COCO root at <base>/jail/coco with every bad kind in both splits, and a
    readable JPEG planted at <base>/etc/passwd, where the escaping path points."""
    base = tmp_path_factory.mktemp("bad_inputs")
    coco = base / "jail" / "coco"
    write_demo(coco, num_train=5, num_val=4, seed=1)
    bad_train, good_train = _add_bad_images(coco, "train", 900)
    bad_val, good_val = _add_bad_images(coco, "val", 1_900_000)
    (base / "etc").mkdir()
    first_good = sorted((coco / "train2017").glob("0*.jpg"))[0]
    (base / "etc" / "passwd").write_bytes(first_good.read_bytes())  # would decode if opened
    return {"coco": coco, "outside": base / "etc", "bad_train": bad_train,
            "good_train": good_train, "bad_val": bad_val, "good_val": good_val}


@pytest.fixture(scope="module")
def params(bad_coco: dict, tiny_models: dict[str, Path],
           tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_params(tmp_path_factory.mktemp("bad_params") / "params.yaml", tiny_models, **{
        "clip_threshold": -1.0, "model_id": str(tiny_models["llava"]),
        "train.image_size": 32, "train.batch_size": 2, "train.bsz": 2, "train.lr": 1e-3,
        "train.gradient_checkpointing": False, "train.max_length": 128,
        "train.val_examples": 20, "train.eval_every": 100, "train.save_every_minutes": 60,
        "train.log_every": 1, "evaluate.num_examples": 0, "evaluate.batch_size": 3,
        "evaluate.max_new_tokens": 4, "evaluate.meteor": False, "evaluate.gallery_images": 2})


@pytest.fixture
def watch_opens(bad_coco: dict) -> Iterator[None]:
    _opened.clear()
    _watching.append(True)
    try:
        yield
    finally:
        _watching.clear()
    outside = [path for path in _opened if path.startswith(str(bad_coco["outside"]))]
    assert outside == []
    assert any(path.startswith(str(bad_coco["coco"])) for path in _opened)  # the hook works


def _assert_augment_metrics(metrics: dict, bad_coco: dict) -> None:
    assert metrics["images"] == len(bad_coco["good_train"]) + len(BAD_FILES)
    assert metrics["images_skipped"] == len(BAD_FILES)
    assert {key.removeprefix("images_skipped_"): value for key, value in metrics.items()
            if key.startswith("images_skipped_")} == ONE_EACH


def _full_image_ids(jsonl: Path) -> set[int]:
    examples, malformed = read_examples(jsonl)
    assert malformed == 0
    return {int(e.id.split("-")[0]) for e in examples if e.kind == "full"}


def _assert_eval_metrics(metrics: dict, predictions: Path, bad_coco: dict) -> None:
    assert {k: v for k, v in metrics.items() if k.startswith("skipped_")} == {
        f"skipped_{reason}": 1 for reason in BAD_FILES}
    assert metrics["skipped"] == len(BAD_FILES)
    assert metrics["n_images"] == len(bad_coco["good_val"])
    assert {p["image_id"] for p in json.loads(predictions.read_text())} == bad_coco["good_val"]


@pytest.mark.usefixtures("watch_opens")
def test_stages_count_every_bad_image_and_use_every_good_one(bad_coco: dict, params: Path,
                                                              tmp_path: Path) -> None:
    coco = bad_coco["coco"]
    run_phrases(coco, tmp_path, params)
    detections = run_detect(coco, tmp_path, params)
    frame, metadata = read_table(detections)
    assert metadata["detect"]["skipped"] == {
        reason: [image_id] for reason, image_id in sorted(bad_coco["bad_train"].items())}
    assert set(frame["image_id"]) <= bad_coco["good_train"]
    _, metadata = read_table(run_clip(coco, detections, params, tmp_path / "regions.parquet"))
    assert metadata["clip_score"]["skipped"] == {}
    out = run_assemble(coco, tmp_path, tmp_path / "regions.parquet", params, "assembled")
    _assert_augment_metrics(json.loads((out / "augment.json").read_text()), bad_coco)
    assert _full_image_ids(out / "train.jsonl") == bad_coco["good_train"]
    assert (out / "plots" / "gallery.png").is_file()

    # Train on every train image, bad ones included (one caption each, one epoch).
    jsonl = tmp_path / "all.jsonl"
    write_demo_jsonl(coco, jsonl, regions=False, captions_per_image=1)
    finetune_llava.main([
        "--train-file", str(jsonl), "--image-root", str(coco),
        "--val-ann", str(coco / "annotations" / "captions_val2017.json"),
        "--val-images", str(coco / "val2017"), "--output-dir", str(tmp_path / "lora"),
        "--checkpoint-dir", str(tmp_path / "checkpoints"),
        "--metrics", str(tmp_path / "train.json"), "--live-dir", str(tmp_path / "live"),
        "--params", str(params), "--num-workers", "0"])
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["skipped"] == ONE_EACH and metrics["skipped_images"] == len(BAD_FILES)
    assert metrics["samples_trained"] == len(bad_coco["good_train"])

    evaluate_coco.main([
        "--model", str(tmp_path / "lora"), "--images", str(coco / "val2017"),
        "--ann", str(coco / "annotations" / "captions_val2017.json"),
        "--out", str(tmp_path / "metrics.json"),
        "--predictions", str(tmp_path / "predictions.json"),
        "--per-image", str(tmp_path / "per_image.csv"),
        "--gallery", str(tmp_path / "plots" / "gallery.png"),
        "--num-workers", "0", "--params", str(params)])
    _assert_eval_metrics(json.loads((tmp_path / "metrics.json").read_text()),
                         tmp_path / "predictions.json", bad_coco)


@pytest.mark.usefixtures("watch_opens")
def test_seed_commands_count_every_bad_image_and_use_every_good_one(
        bad_coco: dict, params: Path, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    coco = bad_coco["coco"]
    jsonl = tmp_path / "augmented" / "train.jsonl"
    augment_gdino_clip.main(["--coco-root", str(coco), "--split", "train", "--out", str(jsonl),
                             "--params", str(params), "--device", "cpu"])
    _assert_augment_metrics(json.loads(jsonl.with_suffix(".stats.json").read_text()), bad_coco)
    assert _full_image_ids(jsonl) == bad_coco["good_train"]

    everything = tmp_path / "all.jsonl"
    write_demo_jsonl(coco, everything, regions=False, captions_per_image=1)
    finetune_llava.main([
        "--train-file", str(everything), "--val-ann",
        str(coco / "annotations" / "captions_val2017.json"), "--val-images",
        str(coco / "val2017"), "--output-dir", str(tmp_path / "lora"),
        "--metrics", str(tmp_path / "train.json"), "--params", str(params),
        "--num-workers", "0"])
    metrics = json.loads((tmp_path / "train.json").read_text())
    assert metrics["skipped"] == ONE_EACH and metrics["skipped_images"] == len(BAD_FILES)
    assert metrics["samples_trained"] == len(bad_coco["good_train"])

    evaluate_coco.main([
        "--model", str(tmp_path / "lora"), "--images", str(coco / "val2017"),
        "--ann", str(coco / "annotations" / "captions_val2017.json"),
        "--model-id", str(tiny_models["llava"]), "--clip-model-id", str(tiny_models["clip"]),
        "--num-workers", "0", "--out", str(tmp_path / "metrics.json"),
        "--predictions", str(tmp_path / "predictions.json"), "--params", str(params)])
    _assert_eval_metrics(json.loads((tmp_path / "metrics.json").read_text()),
                         tmp_path / "predictions.json", bad_coco)


def test_seed_augment_reads_images_without_phrases_and_lowers_the_floor(
        tiny_models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A decompression bomb whose caption yields no phrase never meets detect: assemble must
    still read it, keep it out of the JSONL and count it. And --box-threshold 0.1, under
    params.yaml's detect.floor_score (0.15), runs with the floor lowered to 0.1."""
    coco = tmp_path / "coco"
    write_demo(coco, num_train=3, num_val=1, seed=2)
    ann_path = coco / "annotations" / "captions_train2017.json"
    ann = json.loads(ann_path.read_text())
    bomb_id = 777
    Image.new("1", (10_000, 10_000)).save(coco / "train2017" / "black.png")
    ann["images"].append({**ann["images"][0], "id": bomb_id, "file_name": "black.png"})
    ann["annotations"].append({"id": 77_700, "image_id": bomb_id,
                               "caption": "A huge black image."})
    ann_path.write_text(json.dumps(ann))
    params = write_params(tmp_path / "params.yaml", tiny_models, clip_threshold=-1.0)

    jsonl = tmp_path / "out" / "train.jsonl"
    with caplog.at_level("INFO", logger="src.augment.augment_gdino_clip"):
        augment_gdino_clip.main(["--coco-root", str(coco), "--out", str(jsonl), "--params",
                                 str(params), "--box-threshold", "0.1", "--device", "cpu"])
    assert "detect.floor_score lowered from 0.15 to 0.1" in caplog.text
    used = yaml.safe_load((tmp_path / "out" / "train_work" / "params.yaml").read_text())
    assert (used["box_threshold"], used["detect"]["floor_score"]) == (0.1, 0.1)

    stats = json.loads(jsonl.with_suffix(".stats.json").read_text())
    assert stats["images"] == 4 and stats["images_no_phrases"] == 1
    assert stats["images_skipped"] == stats["images_skipped_decompression_bomb"] == 1
    assert _full_image_ids(jsonl) == {image["id"] for image in ann["images"]} - {bomb_id}
