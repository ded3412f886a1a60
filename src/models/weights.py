"""The identity of a model param (a hub id or a local directory), without reading the weights
at every start.

- A hub id resolves to the commit `from_pretrained` loaded at its revision (the param
  `*_revision`): a pinned commit is itself; a branch or tag (null = main) is what the local
  Hugging Face hub cache's `models--org--name/refs/<name>` names, the commit of
  `snapshots/<commit>`. An unpinned id is logged with the command that pins it.
- A local directory resolves to a digest of its files' relative names and bytes. Each
  file's sha256 is cached by (absolute path, size, mtime), as DVC caches its own hashes, in
  one SQLite file under the user's cache directory: every clone and every
  `dvc exp run --temp` or queued copy of the repo shares it, so 14 GB of weights outside the
  repo are read once per content, not once per start (weights inside a copy are new files,
  read once in it). Like DVC, a file rewritten with the same size and mtime is taken as
  unchanged.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import sqlite3
from pathlib import Path

from src.data.shard_map import file_digest

logger = logging.getLogger(__name__)

COMMIT = re.compile(r"[0-9a-f]{40}")


def model_identity(id_or_dir: str | Path, revision: str | None = None, *,
                   param: str = "") -> str:
    """`dir:<digest of the files>` for a local directory, `hub:<id>@<commit>` for a hub id at
    `revision` (None = main). `param` (e.g. "model") names the params key whose `-S
    <param>_revision=<commit>` pins an unpinned hub id, in the log line that says so."""
    path = Path(id_or_dir)
    if path.is_dir():
        if revision is not None:
            raise ValueError(f"{id_or_dir} is a local directory: it has no revision "
                             f"({revision!r}); set the revision to null")
        return f"dir:{directory_digest(path)}"
    commit = hub_commit(str(id_or_dir), revision)
    if revision is None:
        logger.info("%s is unpinned: loaded its main branch at commit %s; pin it with "
                    "`dvc exp run -S %s_revision=%s`", id_or_dir, commit, param or "<model>",
                    commit)
    return f"hub:{id_or_dir}@{commit}"


def hub_cache() -> Path:
    """Where huggingface_hub keeps its downloads, in its order (HF_HUB_CACHE, the legacy
    HUGGINGFACE_HUB_CACHE, HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub), read now: its own
    constants are read once, at import."""
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.environ[variable])).expanduser()
    return _cache_home("HF_HOME", "huggingface") / "hub"


def hub_commit(repo_id: str, revision: str | None = None) -> str:
    """The commit of `repo_id` at `revision` (None = main) whose snapshot the hub cache holds:
    a commit is itself, a branch or tag the commit its cached ref names (OSError when the
    cache lacks it)."""
    folder = hub_cache() / f"models--{repo_id.replace('/', '--')}"
    name = revision or "main"
    if COMMIT.fullmatch(name):
        commit = name
    else:
        try:
            commit = (folder / "refs" / name).read_text(encoding="utf-8").strip()
        except (FileNotFoundError, NotADirectoryError):
            commit = ""
    if not (COMMIT.fullmatch(commit) and (folder / "snapshots" / commit).is_dir()):
        raise OSError(f"{repo_id!r} at revision {name!r} is not in the hub cache "
                      f"{hub_cache()}: load it once online (`hf download {repo_id} "
                      f"--revision {name}`), or set the param to a local directory")
    return commit


def directory_digest(path: Path) -> str:
    """sha256 over the directory's files (relative name and bytes), each file hashed once
    per (path, size, mtime)."""
    hasher = hashlib.sha256()
    files = sorted(file for file in Path(path).rglob("*") if file.is_file())
    with _DigestCache() as cache:
        for file in files:
            hasher.update(f"{file.relative_to(path).as_posix()}\0{cache.digest(file)}\n"
                          .encode())
    return hasher.hexdigest()


def digest_cache_path() -> Path:
    """The file-digest cache shared by every copy of the repo on this machine."""
    return _cache_home("XDG_CACHE_HOME", "") / "grounded-captioning" / "file-digests.sqlite"


def _cache_home(variable: str, name: str) -> Path:
    if os.environ.get(variable):
        return Path(os.environ[variable]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / name


class _DigestCache:
    """sha256 of files, keyed by (resolved path, size, mtime_ns); safe across processes."""

    def __enter__(self) -> _DigestCache:
        location = digest_cache_path()
        location.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(location, timeout=60)
        self._db.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, "
                         "size INTEGER, mtime_ns INTEGER, sha256 TEXT)")
        return self

    def __exit__(self, *exc: object) -> None:
        self._db.commit()
        self._db.close()

    def digest(self, file: Path) -> str:
        resolved = file.resolve()  # hub snapshots link to their blobs
        stat = resolved.stat()
        row = self._db.execute("SELECT sha256 FROM digests WHERE path = ? AND size = ? AND "
                               "mtime_ns = ?", (str(resolved), stat.st_size,
                                                stat.st_mtime_ns)).fetchone()
        if row is not None:
            return row[0]
        sha256 = file_digest(resolved)
        self._db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)",
                         (str(resolved), stat.st_size, stat.st_mtime_ns, sha256))
        return sha256
