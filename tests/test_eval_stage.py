"""Stage `evaluate` end to end on the demo val split with the tiny models."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from transformers import LlavaForConditionalGeneration

from src.data.images import ImageDataset
from src.eval.metrics import java_on_path
from src.eval.run import score
from stages import evaluate as evaluate_stage

REPO = Path(__file__).resolve().parents[1]
NUM_VAL = 8  # images in the demo_coco fixture's val split


def _params(tmp_path: Path, tiny_models: dict[str, Path], **evaluate: object) -> Path:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["model_id"] = str(tiny_models["llava"])
    raw["clip_model_id"] = str(tiny_models["clip"])
    raw["evaluate"].update({"num_examples": 0, "batch_size": 3, "max_new_tokens": 8,
                            "meteor": False, "gallery_images": 2, **evaluate})
    path = tmp_path / f"params-{len(list(tmp_path.glob('params-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def _run(coco: Path, out: Path, params: Path, *extra: str) -> dict:
    evaluate_stage.main([
        "--images", str(coco / "val2017"),
        "--ann", str(coco / "annotations/captions_val2017.json"),
        "--instances", str(coco / "annotations/instances_val2017.json"),
        "--metrics", str(out / "metrics.json"),
        "--predictions", str(out / "predictions.json"),
        "--per-image", str(out / "per_image.csv"),
        "--plots-dir", str(out / "plots"),
        "--num-workers", "0",
        "--params", str(params),
        *extra,
    ])
    return json.loads((out / "metrics.json").read_text())


def _predictions(out: Path) -> dict[int, str]:
    return {p["image_id"]: p["caption"] for p in json.loads((out / "predictions.json").read_text())}


def test_metrics_equal_pycocoevalcap_on_the_written_predictions(
        demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    params = _params(tmp_path, tiny_models, meteor=True)
    metrics = _run(demo_coco, tmp_path / "out", params)

    predictions = _predictions(tmp_path / "out")
    assert sorted(predictions) == sorted(json.loads(
        (demo_coco / "annotations/captions_val2017.json").read_text())["images"][i]["id"]
        for i in range(NUM_VAL))
    references: dict[int, list[str]] = {i: [] for i in predictions}
    for ann in json.loads((demo_coco / "annotations/captions_val2017.json").read_text())[
            "annotations"]:
        references[ann["image_id"]].append(ann["caption"])
    with java_on_path():
        gts = PTBTokenizer().tokenize({i: [{"caption": c} for c in refs]
                                       for i, refs in references.items()})
        res = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in predictions.items()})
        meteor, _ = Meteor().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {"bleu1": bleu[0], "bleu2": bleu[1], "bleu3": bleu[2], "bleu4": bleu[3],
                "meteor": meteor, "rougeL": Rouge().compute_score(gts, res)[0],
                "cider": Cider().compute_score(gts, res)[0]}
    assert {k: metrics[k] for k in expected} == pytest.approx(expected, rel=1e-9)
    assert metrics["bleu1"] > 0 and metrics["cider"] > 0  # the random model shares some words
    assert metrics["n_images"] == NUM_VAL and metrics["skipped"] == 0
    assert 0 <= metrics["clipscore"] <= 2.5 and 0 <= metrics["refclipscore"] <= 2.5
    assert (metrics["bootstrap_resamples"], metrics["bootstrap_seed"]) == (2000, 0)
    for key in ("cider", "bleu4", "chair_i", "chair_s"):
        low, high = metrics[f"{key}_ci95"]
        assert 0 <= low <= metrics[key] <= high, key
    assert metrics["chair_i"] <= 1 and metrics["chair_s"] <= 1
    assert "chair_unavailable" not in metrics

    with open(tmp_path / "out/per_image.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["image_id"]) for r in rows] == sorted(predictions)
    assert [r["caption"] for r in rows] == [predictions[i] for i in sorted(predictions)]
    mean_clip = sum(float(r["clipscore"]) for r in rows) / len(rows)
    assert mean_clip == pytest.approx(metrics["clipscore"])
    # what a paired comparison of two runs needs: per-image CIDEr and CHAIR counts
    assert sum(float(r["cider"]) for r in rows) / len(rows) == pytest.approx(metrics["cider"])
    mentions = sum(int(r["chair_mentions"]) for r in rows)
    hallucinated = sum(int(r["chair_hallucinated"]) for r in rows)
    assert mentions == metrics["chair_mentions"] and hallucinated == metrics["chair_hallucinated"]
    assert metrics["chair_i"] == (hallucinated / mentions if mentions else 0.0)
    with Image.open(tmp_path / "out/plots/gallery.png") as gallery:
        assert gallery.width > 400 and gallery.height > 2 * 192
    assert not list((tmp_path / "out").glob(".predictions.json.*"))  # shards cleaned up


def test_missing_corrupt_and_unreferenced_images_are_counted(
        demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    coco = tmp_path / "coco"
    shutil.copytree(demo_coco / "val2017", coco / "val2017")
    ann = json.loads((demo_coco / "annotations/captions_val2017.json").read_text())
    files = [image["file_name"] for image in ann["images"]]
    (coco / "val2017" / files[0]).unlink()
    (coco / "val2017" / files[1]).write_bytes(b"\xff\xd8\xff\xe0 truncated garbage")
    shutil.copy(coco / "val2017" / files[2], coco / "val2017" / "no_refs.jpg")
    ann["images"].append({**ann["images"][2], "id": 999, "file_name": "no_refs.jpg"})
    (coco / "annotations").mkdir()
    (coco / "annotations/captions_val2017.json").write_text(json.dumps(ann))

    metrics = _run(coco, tmp_path / "out", _params(tmp_path, tiny_models))

    assert metrics["skipped_missing"] == 1
    assert metrics.get("skipped_not_an_image", 0) + metrics.get("skipped_truncated", 0) == 1
    assert metrics["skipped_no_refs"] == 1
    assert metrics["skipped"] == 3
    assert metrics["n_images"] == NUM_VAL - 2
    # this copy has no instances file: CHAIR is left out, with the reason, and nothing fails
    assert metrics["chair_i"] is None and metrics["chair_s"] is None
    assert "not found" in metrics["chair_unavailable"]
    low, high = metrics["cider_ci95"]
    assert low <= metrics["cider"] <= high
    skipped_ids = {ann["images"][0]["id"], ann["images"][1]["id"], 999}
    assert not skipped_ids & set(_predictions(tmp_path / "out"))


def test_a_killed_run_resumes_without_regenerating(
        demo_coco: Path, tiny_models: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params(tmp_path, tiny_models)  # batch 3: 8 images are 3 generate calls
    original = LlavaForConditionalGeneration.generate
    calls: list[int] = []
    kill_after: list[int] = [1]

    def counting_generate(self: LlavaForConditionalGeneration, **kwargs: object) -> torch.Tensor:
        if len(calls) == kill_after[0]:
            raise KeyboardInterrupt  # the kill arrives during the second batch
        calls.append(kwargs["input_ids"].shape[0])
        return original(self, **kwargs)

    monkeypatch.setattr(LlavaForConditionalGeneration, "generate", counting_generate)
    with pytest.raises(KeyboardInterrupt):
        _run(demo_coco, tmp_path / "out", params)
    assert calls == [3]
    assert not (tmp_path / "out/predictions.json").exists()

    calls.clear()
    kill_after[0] = 99
    resumed = _run(demo_coco, tmp_path / "out", params)
    assert calls == [3, 2]  # only the 5 images the killed run had not finished

    calls.clear()
    uninterrupted = _run(demo_coco, tmp_path / "fresh", params)
    assert calls == [3, 3, 2]
    assert _predictions(tmp_path / "out") == _predictions(tmp_path / "fresh")
    assert resumed == uninterrupted

    # A run killed under other settings leaves a log that must not be reused.
    calls.clear()
    kill_after[0] = 1
    with pytest.raises(KeyboardInterrupt):
        _run(demo_coco, tmp_path / "other", _params(tmp_path, tiny_models, max_new_tokens=5))
    calls.clear()
    kill_after[0] = 99
    _run(demo_coco, tmp_path / "other", params)
    assert calls == [3, 3, 2]
    assert _predictions(tmp_path / "other") == _predictions(tmp_path / "fresh")


def test_disabled_baseline_writes_a_stub_fast(demo_coco: Path, tiny_models: dict[str, Path],
                                              tmp_path: Path) -> None:
    metrics = _run(demo_coco, tmp_path / "out", _params(tmp_path, tiny_models, baseline=False))
    assert metrics == {"baseline": "disabled"}
    assert json.loads((tmp_path / "out/predictions.json").read_text()) == []
    with open(tmp_path / "out/per_image.csv", encoding="utf-8") as handle:
        assert list(csv.DictReader(handle)) == []
    assert (tmp_path / "out/plots/gallery.png").is_file()


def test_unknown_ids_and_empty_captions_do_not_crash(demo_coco: Path,
                                                     tiny_models: dict[str, Path]) -> None:
    references = {1: ["a red circle.", "a small red circle"], 2: ["a blue square."]}
    metrics, rows, _ = score({1: "", 2: "a blue square", 77: "an image nobody knows"}, references,
                          ImageDataset([], Path(".")), clip_model_id=str(tiny_models["clip"]),
                          meteor=False, num_workers=0, device=torch.device("cpu"))
    assert metrics["n_images"] == 2 and metrics["n_empty"] == 1
    assert metrics["skipped_no_refs"] == 1 and metrics["skipped"] == 1
    assert "skipped_missing" not in metrics  # only reasons that occurred
    assert [row["image_id"] for row in rows] == [1, 2]
    assert rows[0]["cider"] == 0.0 and rows[1]["bleu1"] > 0.99

    nothing, rows, _ = score({77: "x"}, references, ImageDataset([], Path(".")),
                          clip_model_id=str(tiny_models["clip"]),
                          meteor=False, num_workers=0, device=torch.device("cpu"))
    assert nothing["n_images"] == 0 and nothing["skipped_no_refs"] == 1 and rows == []
    assert "bleu4" not in nothing


def test_chair_on_the_demo_counts_the_shapes_an_image_lacks(demo_coco: Path) -> None:
    """Each val image captioned with the next image's first reference: its colour+shape
    phrases are hallucinated exactly where this image has no shape of that colour and kind."""
    captions = json.loads((demo_coco / "annotations/captions_val2017.json").read_text())
    instances = json.loads((demo_coco / "annotations/instances_val2017.json").read_text())
    names = {c["id"]: c["name"] for c in instances["categories"]}
    shapes: dict[int, set[str]] = {}
    for ann in instances["annotations"]:
        shapes.setdefault(ann["image_id"], set()).add(names[ann["category_id"]])
    references: dict[int, list[str]] = {}
    for ann in captions["annotations"]:
        references.setdefault(ann["image_id"], []).append(ann["caption"])
    ids = sorted(references)
    predictions = {i: references[ids[(n + 1) % len(ids)]][0] for n, i in enumerate(ids)}

    metrics, rows, chair = score(predictions, references, ImageDataset([], Path(".")),
                                 clip_model_id=None, meteor=False, num_workers=0,
                                 device=torch.device("cpu"),
                                 instances_path=demo_coco / "annotations/instances_val2017.json")

    phrase = re.compile(r"\b(?:red|green|blue|yellow|purple|orange) (?:circle|square|triangle)")
    named = {i: phrase.findall(predictions[i].lower()) for i in ids}
    expected_wrong = {i: [p for p in named[i] if p not in shapes[i]] for i in ids}
    assert {i: [m.text.lower() for m in chair[i].mentions] for i in ids} == named
    assert {i: [m.text.lower() for m in chair[i].hallucinated] for i in ids} == expected_wrong
    total = sum(map(len, named.values()))
    assert metrics["chair_i"] == pytest.approx(sum(map(len, expected_wrong.values())) / total)
    assert metrics["chair_s"] == pytest.approx(sum(bool(w) for w in expected_wrong.values())
                                               / len(ids))
    assert 0 < metrics["chair_s"] < 1  # some next-image captions happen to fit
    assert [row["chair_hallucinated"] for row in rows] == [len(expected_wrong[i]) for i in ids]

    own = {i: references[i][0] for i in ids}
    exact, _, _ = score(own, references, ImageDataset([], Path(".")), clip_model_id=None,
                        meteor=False, num_workers=0, device=torch.device("cpu"),
                        instances_path=demo_coco / "annotations/instances_val2017.json")
    assert (exact["chair_i"], exact["chair_s"]) == (0.0, 0.0)
