"""Append-only prediction logs, so a killed evaluation resumes without regenerating.

Each process appends to its own JSONL file `<prefix>.rank<r>.jsonl`, one record a line
({"image_id", "caption"} or {"image_id", "skip": reason}), flushed after every batch. The
first line holds the run key (a hash of everything that changes a caption): a log written
under other settings is stale and never reused. On resume every process reads every
rank's log, so a run may resume with a different number of processes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One evaluated image: its caption, or why it was skipped (`skip` is an ImageSkip reason)."""

    image_id: int
    caption: str | None = None
    skip: str | None = None


def run_key(settings: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-serialisable settings."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def fingerprint(id_or_path: str | Path) -> str:
    """Cheap identity of a model or file: a hub id as is; a local file or directory by its
    files' names, sizes and modification times (a rewrite changes it without hashing GBs)."""
    path = Path(id_or_path)
    if not path.exists():
        return str(id_or_path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return f"{path.resolve()}@{digest.hexdigest()[:16]}"


def _parse(line: str) -> Prediction | None:
    try:
        record = json.loads(line)
        prediction = Prediction(record["image_id"], record.get("caption"), record.get("skip"))
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    if not isinstance(prediction.image_id, int) or (prediction.caption is None) == (
        prediction.skip is None
    ):
        return None
    return prediction


class PredictionLog:
    """The logs of one run (all ranks) under `prefix`; `rank` is the one this process writes."""

    def __init__(self, prefix: Path, key: str, rank: int = 0) -> None:
        self.prefix = Path(prefix)
        self.key = key
        self.path = self.prefix.with_name(f"{self.prefix.name}.rank{rank}.jsonl")

    def _header(self, path: Path) -> dict[str, Any] | None:
        with open(path, encoding="utf-8") as handle:
            first = handle.readline()
        try:
            header = json.loads(first)
        except json.JSONDecodeError:
            return None
        return header if isinstance(header, dict) else None

    def load(self) -> dict[int, Prediction]:
        """Every finished image of this run, from all ranks' logs; stale logs are ignored."""
        done: dict[int, Prediction] = {}
        for path in log_paths(self.prefix):
            header = self._header(path)
            if header is None or header.get("key") != self.key:
                logger.info("ignoring %s: written under other settings", path)
                continue
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().split("\n")[1:]
            # A kill mid-write leaves at most the last line incomplete; it is redone.
            for line in lines:
                prediction = _parse(line)
                if prediction is not None:
                    done[prediction.image_id] = prediction
        return done

    @contextmanager
    def appending(self) -> Iterator[Callable[[Iterable[Prediction]], None]]:
        """Yield `append(predictions)`, which writes and flushes one batch to this rank's log.

        A log of this run is continued (an incomplete last line from a kill is cut off);
        any other file at that path is replaced.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        resume = self.path.exists() and (self._header(self.path) or {}).get("key") == self.key
        if resume:
            data = self.path.read_bytes()
            complete = data[: data.rfind(b"\n") + 1]
            if len(complete) < len(data):
                self.path.write_bytes(complete)
        with open(self.path, "a" if resume else "w", encoding="utf-8") as handle:
            if not resume:
                handle.write(json.dumps({"key": self.key}) + "\n")
                handle.flush()

            def append(predictions: Iterable[Prediction]) -> None:
                for prediction in predictions:
                    record: dict[str, Any] = {"image_id": prediction.image_id}
                    if prediction.skip is None:
                        record["caption"] = prediction.caption
                    else:
                        record["skip"] = prediction.skip
                    handle.write(json.dumps(record) + "\n")
                handle.flush()

            yield append


def log_paths(prefix: Path) -> list[Path]:
    """Every rank's log of the run under `prefix`, whatever its key."""
    return sorted(prefix.parent.glob(f"{prefix.name}.rank*.jsonl"))


def remove_logs(prefix: Path) -> None:
    """Delete every rank's log (once the merged predictions are written)."""
    for path in log_paths(prefix):
        path.unlink()
