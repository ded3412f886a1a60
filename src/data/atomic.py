"""Atomic writes of files and folders: a half-written output never looks finished.

A write goes to `.<name>.<32 hex digits>.tmp` beside its target and is renamed onto it.
A killed writer leaves that temp file behind; a step removes those of what it writes
when it starts (`remove_stale_temps`). A folder is swapped whole (`replaced_dir`); a swap a
kill interrupted is finished by the next writer (`recover_replaced_dir`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TEMP_NAME = re.compile(r"\..+\.[0-9a-f]{32}\.tmp")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a fresh temp path beside `path`; rename it onto `path` only if the block succeeds.

    The temp file is not pre-created: the writer creates it, with the usual umask
    permissions (mkstemp's 0600 would make outputs private to the writer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"  # matches TEMP_NAME
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


@contextmanager
def replaced_dir(path: Path) -> Iterator[Path]:
    """Yield a fresh directory beside `path`; put it in `path`'s place only if the block succeeds.

    The caller decides that what is at `path` may go. The new directory is complete before
    anything is removed: it is renamed over an absent or empty `path`; a non-empty one is
    first renamed aside to `.NAME.*.old` (where a crash between the two renames leaves it),
    then deleted. Made with `mkdir`, so it gets the user's umask (mkdtemp's 0700 would not).
    What a killed earlier swap left is dealt with first (`recover_replaced_dir`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_replaced_dir(path)
    tag = uuid.uuid4().hex
    tmp, old = path.parent / f".{path.name}.{tag}.tmp", path.parent / f".{path.name}.{tag}.old"
    tmp.mkdir()
    try:
        yield tmp
        moved = path.is_dir() and any(path.iterdir())
        if moved:
            path.rename(old)
        try:
            os.replace(tmp, path)
        except OSError:
            if moved:
                old.rename(path)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
def recover_replaced_dir(path: Path) -> None:
    """Finish what a killed `replaced_dir` of `path` left beside it; call it before anything
    else writes `path` (a live swap's folders would be lost).

    Killed between its two renames, it left `path` absent and the previous folder at
    `.NAME.<hex>.old`: the last good one, put back in place of an absent or empty `path`
    (the newest, should several be there). With something in `path`, an `.old` is a previous
    folder whose deletion was cut short, and goes. A `.NAME.<hex>.tmp` is a new folder that
    never took the place: it goes too.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[0-9a-f]{{32}}\.(old|tmp)")
    beside = [(p, m.group(1)) for p in path.parent.iterdir() if (m := pattern.fullmatch(p.name))]
    olds = sorted((p for p, kind in beside if kind == "old"), key=lambda p: p.stat().st_ctime)
    vacant = not path.exists() or (path.is_dir() and not any(path.iterdir()))
    if olds and vacant:
        os.replace(olds.pop(), path)  # rename sets ctime: the newest .old is the last swapped
        logger.warning("restored %s from the swap a killed run left unfinished", path)
    stale = [*olds, *(p for p, kind in beside if kind == "tmp")]
    for leftover in stale:
        if leftover.is_dir():
            shutil.rmtree(leftover)
        else:
            leftover.unlink()
    if stale:
        logger.info("removed %d folders a killed swap of %s left beside it", len(stale), path)


def remove_stale_temps(folder: Path, target: str = "*") -> int:
    """Delete the temp files of `atomic_path` that a killed write of `target` (a file name or
    glob; every file by default) left in `folder`; return how many. Call it when a step
    starts, for what only that step writes: a live writer's temp file would be lost."""
    stale = [path for path in Path(folder).glob(f".{target}.*.tmp")
             if TEMP_NAME.fullmatch(path.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        logger.info("removed %d temp files of an interrupted write from %s", len(stale), folder)
    return len(stale)
