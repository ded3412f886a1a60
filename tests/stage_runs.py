"""The augmentation stage mains called as DVC calls them, on a params file of our choosing;
and the faults a resumed run must survive: a code change, a damaged shard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from src import provenance
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


def project_copy(dest: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's code that the run fingerprints digest instead of the repo's:
    editing a file in it is a code change as the fingerprint sees it (what runs is still
    the repo's code)."""
    for folder in ("src",):
        shutil.copytree(REPO / folder, dest / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(provenance, "ROOT", dest)
    return dest


def edit(path: Path) -> None:
    """A code change: one more statement at the end of the module."""
    path.write_text(path.read_text(encoding="utf-8") + "EDITED = True\n", encoding="utf-8")


def damage_a_page(path: Path, column: str) -> None:
    """Flip one bit inside `column`'s dictionary page (its values) of a Parquet file; the
    footer stays intact, so the file opens and reads without a checksum."""
    metadata = pq.ParquetFile(path).metadata
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    chunk = metadata.row_group(0).column(names.index(column))
    data = bytearray(path.read_bytes())
    data[chunk.data_page_offset - 4] ^= 0x01
    path.write_bytes(bytes(data))


def copy_working_tree(target: Path) -> Path:
    """The working tree as it is (committed or not), without outputs, caches or the venv,
    which is linked instead."""
    top = {".git", ".venv", "data", "models", "metrics", "plots", "dvclive"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in {"__pycache__", ".pytest_cache", ".ruff_cache"}}
        if Path(folder) == REPO:
            skip |= top & set(names)
        if Path(folder) == REPO / ".dvc":
            skip |= {"tmp", "cache"} & set(names)
        return skip

    shutil.copytree(REPO, target, ignore=ignore, symlinks=True)
    (target / ".venv").symlink_to(REPO / ".venv")
    return target
