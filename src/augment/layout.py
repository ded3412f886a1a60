"""Where a COCO root keeps a table's images: the split folder is read off the disk, not assumed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from src.data.coco import path_inside

# Enough file names to tell the split folders apart when a few images are missing.
SAMPLE = 32


def find_image_dir(coco_root: Path, file_names: Sequence[str]) -> str:
    """Name of the folder of `coco_root` (e.g. "train2017") holding most of `file_names`.

    With no file names there is nothing to read and the root itself ("") is returned. Names
    that escape a folder (`../../etc/passwd`) are never looked up: reading them is a skip.
    """
    coco_root = Path(coco_root)
    sample = [name for name in file_names[:SAMPLE] if path_inside(coco_root, name)]
    if not sample:
        return ""
    folders = sorted(p for p in coco_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    hits = {folder.name: sum(path_inside(folder, name).is_file() for name in sample)
            for folder in folders}
    best = max(hits, key=lambda name: (hits[name], name), default=None)
    if best is None or hits[best] == 0:
        raise FileNotFoundError(f"no folder of {coco_root} holds {sample[0]} or the other images "
                                "of the table (expected e.g. train2017/)")
    return best

