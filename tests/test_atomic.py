"""Atomic folder replacement: the old folder goes only once the new one is complete."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from src.data.atomic import replaced_dir


class Crash(Exception):
    pass


def test_a_failed_write_leaves_the_old_folder_and_nothing_beside(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old\n")
    with pytest.raises(Crash), replaced_dir(tmp_path / "out") as new:
        (new / "half.txt").write_text("half")
        raise Crash
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"]


@pytest.mark.parametrize("before", ["absent", "empty", "full"])
def test_the_new_folder_takes_the_place_whole_at_the_umask(tmp_path: Path, before: str) -> None:
    out = tmp_path / "out"
    if before != "absent":
        out.mkdir(mode=0o700)
    if before == "full":
        (out / "old.txt").write_text("old\n")
    old_umask = os.umask(0o027)
    try:
        with replaced_dir(out) as new:
            (new / "new.txt").write_text("new\n")
    finally:
        os.umask(old_umask)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert out.stat().st_mode & 0o777 == 0o750
