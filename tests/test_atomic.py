"""Atomic folder replacement: the old folder goes only once the new one is complete, and a
swap a kill interrupted is finished by the next writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from src.data.atomic import recover_replaced_dir, replaced_dir

REPO = Path(__file__).resolve().parents[1]


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


# A writer of `out` SIGKILLed at the swap's rename onto `out` or at the deletion of the
# previous folder (argv: out, the os or shutil function to kill at).
KILLED_SWAP = """
import os, shutil, signal, sys
from pathlib import Path
from src.data import atomic
module, name = sys.argv[2].split(".")
setattr({"os": os, "shutil": shutil}[module], name, lambda *a, **k: os.kill(os.getpid(), 9))
with atomic.replaced_dir(Path(sys.argv[1])) as new:
    (new / "new.txt").write_text("new")
"""


def _killed_swap(out: Path, at: str) -> None:
    (out / "old.txt").parent.mkdir()
    (out / "old.txt").write_text("old")
    killed = subprocess.run([sys.executable, "-c", KILLED_SWAP, str(out), at], cwd=REPO)
    assert killed.returncode == -signal.SIGKILL


def _contents(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in folder.iterdir()}


@pytest.mark.parametrize("next_out", ["absent", "empty"])
def test_killed_between_the_renames_the_old_folder_is_put_back(tmp_path: Path,
                                                              next_out: str) -> None:
    """The previous folder is the last good one: the next writer finds it in place (also
    over an empty folder someone made since), with nothing left beside it."""
    out = tmp_path / "out"
    _killed_swap(out, "os.replace")
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".old", ".tmp"]
    if next_out == "empty":
        out.mkdir()
    recover_replaced_dir(out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and _contents(out) == {"old.txt": "old"}
    with replaced_dir(out) as new:
        (new / "newer.txt").write_text("newer")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert _contents(out) == {"newer.txt": "newer"}


def test_killed_after_the_renames_the_old_folder_goes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _killed_swap(out, "shutil.rmtree")  # the rename onto `out` done, the old one not deleted
    assert sorted(p.name for p in tmp_path.iterdir())[0].endswith(".old")
    with replaced_dir(out) as new:  # the next writer
        assert sorted(p.name for p in tmp_path.iterdir()) == [new.name, "out"]
        assert _contents(out) == {"new.txt": "new"}
        (new / "newer.txt").write_text("newer")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert _contents(out) == {"newer.txt": "newer"}
