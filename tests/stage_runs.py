"""The augmentation stage mains called as DVC calls them, on a params file of our choosing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from src.augment import assemble, clip_score, detect, phrases

REPO = Path(__file__).resolve().parents[1]


def write_params(path: Path, models: dict[str, Path], **changes: object) -> Path:
    """params.yaml with the demo's models and `changes` ("detect.floor_score": 0.0, ...)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw.update(profile="demo", max_images=0, detector_id=str(models["grounding-dino"]),
               clip_model_id=str(models["clip"]))
    raw["detect"].update(batch_size=4, shard_size=8, num_workers=0)
    raw["clip_score"].update(shard_size=8, num_workers=0)
    for key, value in changes.items():
        *parents, leaf = key.split(".")
        node = raw
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def run_phrases(coco_root: Path, out_dir: Path, params: Path) -> None:
    phrases.main(["--captions", str(coco_root / "annotations" / "captions_train2017.json"),
                  "--captions-out", str(out_dir / "captions.parquet"),
                  "--phrases-out", str(out_dir / "phrases.parquet"), "--params", str(params)])


def run_detect(coco_root: Path, work: Path, params: Path, name: str = "detections",
               phrase_table: str = "phrases.parquet") -> Path:
    out = work / f"{name}.parquet"
    detect.main(["--phrases", str(work / phrase_table), "--coco-root", str(coco_root),
                 "--shards-dir", str(work / f"{name}_shards"), "--out", str(out),
                 "--params", str(params), "--device", "cpu"])
    return out


def run_clip(coco_root: Path, detections: Path, params: Path, out: Path) -> Path:
    clip_score.main(["--detections", str(detections), "--coco-root", str(coco_root),
                     "--shards-dir", str(out.with_suffix(".shards")), "--out", str(out),
                     "--params", str(params), "--device", "cpu"])
    return out


def run_assemble(coco_root: Path, work: Path, regions: Path, params: Path, tag: str,
                 instances: Path | None = None) -> Path:
    """The assemble stage into `work/tag`; with `instances`, measured against that truth."""
    out = work / tag
    assemble.main(["--captions", str(work / "captions.parquet"), "--regions", str(regions),
                   "--coco-root", str(coco_root), "--out", str(out / "train.jsonl"),
                   "--metrics", str(out / "augment.json"), "--plots-dir", str(out / "plots"),
                   "--params", str(params),
                   *(["--instances", str(instances)] if instances is not None else [])])
    return out


def phrase_subset(work: Path, image_ids: list[int], name: str) -> str:
    """A phrases table of only `image_ids`, beside the full one; returns its file name."""
    table = pd.read_parquet(work / "phrases.parquet")
    table[table["image_id"].isin(image_ids)].to_parquet(work / f"{name}.parquet")
    return f"{name}.parquet"
