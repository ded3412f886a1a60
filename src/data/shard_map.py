"""A resumable, data-parallel map over work items: finished work is kept, shard by shard.

Work items (images to detect in, to score the crops of, to caption) are dealt in shards
of `shard_size` to the accelerate processes, round robin. A process writes each shard as
soon as it is done: one Parquet file (atomically), whose metadata is its manifest: the run's
fingerprint, the shard's items with their digests, and the items skipped with reasons.
A killed run loses at most the shards in flight. The next run reads every manifest in
the folder, redoes only the items no finished shard of the same run holds, and the
main process merges the rows of all items, in item order, whoever computed them.

What is "the same run" is decided by `fingerprint`, the one definition that detection,
evaluation and training checkpoints share:

- Finished work is invalidated by anything that changes its output: the output-changing
  params (floor score, generation settings, the training config), the model's identity
  (a digest of its config and loaded weights, so a checkpoint rebuilt at the same path
  or hub id counts as new; an adapter merged in is part of the weights), and the
  input's content (each item's digest: its id, relative path and, for detection, its
  phrases; a training file by its bytes).
- It is never invalidated by execution knobs: batch size, DataLoader workers, shard
  size, the number of processes, or the device's progress. Items are reused across
  shard sizes because resume is decided per item, not per shard file. Images are
  identified by their path under the root, not their bytes (COCO's images are immutable;
  hashing 118k JPEGs would cost more than most stages).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import torch
from accelerate import PartialState

from src.data.skips import SkipCounter
from src.data.tables import read_metadata, read_table, write_table

logger = logging.getLogger(__name__)

SHARD_GLOB = "shard-*.parquet"


def digest(value: object) -> str:
    """sha256 of a JSON-serialisable value (keys sorted, so dict order never matters)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    hasher = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def model_digest(model: torch.nn.Module) -> str:
    """sha256 of a model's config and weights as loaded (whatever its id or directory)."""
    hasher = hashlib.sha256(model.config.to_json_string(use_diff=False).encode("utf-8"))
    for name, tensor in sorted(model.state_dict().items()):
        hasher.update(name.encode("utf-8"))
        # reshape: a 0-dim tensor (CLIP's logit_scale) has no byte view of its own
        hasher.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
                      .tobytes())
    return hasher.hexdigest()


def fingerprint(*, params: Mapping[str, Any], model: str, inputs: object = None) -> str:
    """The identity of a run's output: output-changing `params`, the `model` digest (see
    `model_digest`) and the `inputs`' content. Never pass execution knobs (batch size,
    workers, shard size): they must not invalidate finished work. Inputs that are work
    items are not passed here: each item's own digest stands for its content."""
    return digest({"params": params, "model": model, "inputs": inputs})[:16]


def _shard_path(shards_dir: Path, manifest: Mapping[str, Any]) -> Path:
    return Path(shards_dir) / f"shard-{digest(manifest)[:16]}.parquet"


def finished_items(shards_dir: Path, run: str) -> dict[tuple[int, str], Path]:
    """(item id, item digest) -> the shard file of run `run` that holds it."""
    done: dict[tuple[int, str], Path] = {}
    for path in sorted(Path(shards_dir).glob(SHARD_GLOB)):
        try:
            manifest = read_metadata(path).get("manifest", {})
        except (OSError, ValueError):  # not a Parquet file: redone, then replaced
            continue
        if manifest.get("run") == run:
            for item, item_digest in manifest["items"]:
                done.setdefault((item, item_digest), path)
    return done


def write_shard(shards_dir: Path, run: str, items: Sequence[tuple[int, str]],
                frame: pd.DataFrame, skips: SkipCounter) -> Path:
    """One finished shard: its rows, and its manifest and skips in the file's metadata."""
    manifest = {"run": run, "items": [list(item) for item in items]}
    path = _shard_path(shards_dir, manifest)
    write_table(frame, path, {"manifest": manifest, "skipped": skips.as_dict()})
    return path


def _merge(shards_dir: Path, run: str, items: Sequence[tuple[int, str]], key_column: str,
           empty: pd.DataFrame) -> tuple[pd.DataFrame, SkipCounter]:
    done = finished_items(shards_dir, run)
    missing = [item for item in items if tuple(item) not in done]
    if missing:
        raise RuntimeError(f"{len(missing)} items of run {run} have no finished shard in "
                           f"{shards_dir} (e.g. item {missing[0][0]})")
    wanted: dict[Path, set[int]] = {}
    for item in items:
        wanted.setdefault(done[tuple(item)], set()).add(item[0])
    frames, skips = [empty], SkipCounter()
    for path, ids in sorted(wanted.items()):
        frame, metadata = read_table(path)
        frames.append(frame[frame[key_column].isin(ids)])
        skips.update(SkipCounter({reason: [i for i in skipped if i in ids]
                                  for reason, skipped in metadata["skipped"].items()}))
    order = {item[0]: position for position, item in enumerate(items)}
    merged = pd.concat(frames, ignore_index=True).astype(empty.dtypes.to_dict())
    merged = merged.sort_values(key_column, key=lambda ids: ids.map(order), kind="stable",
                                ignore_index=True)
    return merged, skips


def remove_stale_shards(shards_dir: Path, run: str) -> int:
    """Delete shard files of other runs (and unreadable ones); return how many."""
    current = set(finished_items(shards_dir, run).values())
    stale = [path for path in sorted(Path(shards_dir).glob(SHARD_GLOB)) if path not in current]
    for path in stale:
        path.unlink()
    return len(stale)


def shard_batches(shards: Sequence[Sequence[int]],
                  split: Callable[[Sequence[int]], list[list[int]]]) -> list[tuple[int, list[int]]]:
    """(shard index, batch) for every batch of every shard: batches never cross a shard,
    so a shard's output does not depend on which process or run computed it."""
    return [(index, batch) for index, shard in enumerate(shards) for batch in split(shard)]


R = TypeVar("R")


def by_shard(batches: Sequence[tuple[int, Sequence[int]]],
             results: Iterable[R]) -> Iterator[tuple[int, list[R]]]:
    """Per-batch `results` (one per entry of `batches`, in order) regrouped by shard:
    yields (shard index, its batches' results) as soon as the shard's last batch is in."""
    remaining = Counter(shard for shard, _ in batches)
    held: dict[int, list[R]] = {}
    for (shard, _), result in zip(batches, results, strict=True):
        held.setdefault(shard, []).append(result)
        remaining[shard] -= 1
        if remaining[shard] == 0:
            yield shard, held.pop(shard)


Work = Callable[[list[list[int]]], Iterator[tuple[list[int], pd.DataFrame, SkipCounter]]]


def map_shards(items: Sequence[tuple[int, str]], work: Work, *, shards_dir: Path, run: str,
               shard_size: int, state: PartialState, key_column: str,
               empty: pd.DataFrame) -> tuple[pd.DataFrame, SkipCounter] | None:
    """Run `work` over the items no finished shard of `run` holds, this process's share.

    `items` are (item id, item digest) pairs, ids unique. `work(shards)` gets this
    process's shards (lists of positions in `items`) and yields (shard, rows, skips) as
    each shard finishes; rows carry the item id in `key_column`. Returns, on the main
    process, every item's rows in item order (typed like `empty`) and skips; None on
    the others. All processes must call it.
    """
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    Path(shards_dir).mkdir(parents=True, exist_ok=True)
    done = finished_items(shards_dir, run)
    state.wait_for_everyone()  # every process has read the manifests before any shard is written
    todo = [position for position, item in enumerate(items) if tuple(item) not in done]
    shards = [todo[start:start + shard_size] for start in range(0, len(todo), shard_size)]
    mine = shards[state.process_index::state.num_processes]
    logger.info("%d items: %d done, %d to run in %d shards (%d on this process of %d)",
                len(items), len(items) - len(todo), len(todo), len(shards), len(mine),
                state.num_processes)
    for shard, frame, skips in work(mine):
        write_shard(shards_dir, run, [items[position] for position in shard], frame, skips)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return _merge(shards_dir, run, items, key_column, empty)
