"""A resumable, data-parallel map over work items: finished work is kept, shard by shard.

Work items (images to detect in, to score the crops of, to caption) are dealt in shards
of `shard_size` to the accelerate processes, round robin. A process writes each shard as
soon as it is done: one Parquet file (atomically), whose metadata is its manifest: the run's
fingerprint, the shard's items with their digests, and the items skipped with reasons.
A killed run loses at most the shards in flight. The next run reads every manifest in
the folder, redoes only the items no finished shard of the same run holds, and the
main process merges the rows of all items, in item order, whoever computed them.

What is "the same run" is decided by `fingerprint`, the one definition that detection,
evaluation and training checkpoints share. Two runs are the same when they have the same
inputs and the same code:

- Code: the digest of the step module's import closure over the project's files (the
  files its DVC stage lists as deps, walked by `src.provenance.project_files`, the walk
  tests/test_dvc_deps.py checks dvc.yaml with), and the versions of Python and of the
  packages that shape outputs (`src.provenance.OUTPUT_PACKAGES`: torch, transformers,
  tokenizers, peft, accelerate, pillow, numpy, ...). An edited step re-run by DVC never
  resumes the old code's work.
- Inputs: the output-changing params (floor score, generation settings, the training
  config), the model's identity
  (`src.models.weights.model_identity`: a hub id's commit, a local directory's content
  digest, so a checkpoint rebuilt at the same path or a moved hub branch counts as new;
  an adapter's directory is part of it), every other input that changes outputs (the processor's and
  tokenizer's config, the image root, the process count where it changes batches), and
  the input's content (each item's digest: its id, relative path and, for detection, its
  phrases; a training file by its bytes).
- It is never invalidated by execution knobs: batch size, DataLoader workers, shard
  size, the number of processes where batches do not depend on it, or the device's
  progress. Items are reused across shard sizes because resume is decided per item, not
  per shard file. Images are identified by their path under the root, not their bytes
  (COCO's images are immutable; hashing 118k JPEGs would cost more than most stages).

What a finished shard holds is final only where it cannot change: an item skipped for a
reason that can (a missing or unreadable image, restored since) is tried again on resume
(`src.data.skips.FINAL_REASONS`). Each shard carries Parquet page checksums; a shard that
fails them (or cannot be read at all) is named in a warning, removed and redone.
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
from accelerate import PartialState
from pyarrow import ArrowException

from src.data.atomic import remove_stale_temps
from src.data.skips import FINAL_REASONS, SkipCounter
from src.data.tables import read_metadata, read_table, write_table
from src.provenance import code_digest, package_versions

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


def processor_digest(processor: object) -> str:
    """sha256 of what a transformers processor (or a bare tokenizer) does to inputs: its
    image processor's config and its tokenizer's full definition (vocabulary, merges,
    normalizer, special tokens), whatever directory or hub id it came from."""
    parts: dict[str, object] = {}
    image_processor = getattr(processor, "image_processor", None)
    if image_processor is not None:
        parts["image_processor"] = image_processor.to_dict()
    tokenizer = getattr(processor, "tokenizer", processor)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts["tokenizer"] = backend.to_str() if backend is not None else tokenizer.get_vocab()
    parts["special_tokens"] = getattr(tokenizer, "special_tokens_map", None)
    return digest(parts)


def fingerprint(*, code: str, params: Mapping[str, Any], model: str,
                inputs: object = None) -> str:
    """The identity of a run's output (see the module docstring): the code of step module
    `code` (its name, e.g. `__name__`) and the package versions, output-changing `params`,
    the `model` identity (see
    `src.models.weights.model_identity`) and every other output-changing input in
    `inputs` (JSON-serialisable). Never pass execution knobs (batch size, workers, shard
    size): they must not invalidate finished work. Inputs that are work items are not
    passed here: each item's own digest stands for its content."""
    return digest({"code": code_digest(code), "packages": package_versions(),
                   "params": params, "model": model, "inputs": inputs})[:16]


def _shard_path(shards_dir: Path, manifest: Mapping[str, Any]) -> Path:
    return Path(shards_dir) / f"shard-{digest(manifest)[:16]}.parquet"


def _retried(skipped: Mapping[str, Sequence[int]]) -> set[int]:
    """The ids a shard skipped for a reason that may read otherwise now."""
    return {i for reason, ids in skipped.items() if reason not in FINAL_REASONS for i in ids}


def _age_order(path: Path) -> tuple[int, str]:
    try:
        return path.stat().st_mtime_ns, path.name
    except FileNotFoundError:
        return 0, path.name


def finished_items(shards_dir: Path, run: str, *,
                   retry_skipped: bool = True) -> dict[tuple[int, str], Path]:
    """(item id, item digest) -> the shard file of run `run` that holds it.

    With `retry_skipped`, an item a shard skipped for a reason that can change (see
    `src.data.skips.FINAL_REASONS`) is not finished there: a resumed run tries it again.
    Without, it is (a run's own skips, for merging): from a shard that holds it done if
    there is one, else from the newest shard that skipped it."""
    done: dict[tuple[int, str], Path] = {}
    skipped: dict[tuple[int, str], Path] = {}
    for path in sorted(Path(shards_dir).glob(SHARD_GLOB), key=_age_order):
        try:
            metadata = read_metadata(path)
        except (OSError, ValueError):  # not a Parquet file: redone, then replaced
            continue
        manifest = metadata.get("manifest", {})
        if manifest.get("run") != run:
            continue
        retried = _retried(metadata.get("skipped", {}))
        for item, item_digest in manifest["items"]:
            if item in retried:
                skipped[(item, item_digest)] = path
            else:
                done.setdefault((item, item_digest), path)
    return done if retry_skipped else {**skipped, **done}


def remove_damaged_shards(shards_dir: Path) -> int:
    """Read every shard in full, checking each page's checksum; delete those that fail
    (named in a warning) so that their items are redone. Returns how many."""
    damaged = 0
    for path in sorted(Path(shards_dir).glob(SHARD_GLOB)):
        try:
            read_table(path)
        except FileNotFoundError:  # another process found it damaged first
            continue
        except (OSError, ValueError, ArrowException) as error:
            logger.warning("removing damaged shard %s (its items are redone): %s", path, error)
            path.unlink(missing_ok=True)
            damaged += 1
    return damaged


def write_shard(shards_dir: Path, run: str, items: Sequence[tuple[int, str]],
                frame: pd.DataFrame, skips: SkipCounter) -> Path:
    """One finished shard: its rows, and its manifest and skips in the file's metadata."""
    manifest = {"run": run, "items": [list(item) for item in items]}
    path = _shard_path(shards_dir, manifest)
    write_table(frame, path, {"manifest": manifest, "skipped": skips.as_dict()})
    return path


def _merge(shards_dir: Path, run: str, items: Sequence[tuple[int, str]], key_column: str,
           empty: pd.DataFrame) -> tuple[pd.DataFrame, SkipCounter]:
    done = finished_items(shards_dir, run, retry_skipped=False)
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
    """Delete shard files of other runs, unreadable ones, and those whose every item a
    later shard holds; return how many."""
    current = set(finished_items(shards_dir, run, retry_skipped=False).values())
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
    remove_stale_temps(shards_dir)
    remove_damaged_shards(shards_dir)
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


def map_image_shards(items: Sequence[tuple[int, str]], work: Work, *, code: str,
                     params: Mapping[str, Any], model: str, processor: object, image_dir: Path,
                     shards_dir: Path, shard_size: int, state: PartialState,
                     empty: pd.DataFrame) -> tuple[pd.DataFrame, SkipCounter] | None:
    """`map_shards` for a step that runs one model over images (rows keyed by "image_id"),
    whose run is the `fingerprint` of the step module `code`, its output-changing `params`,
    the `model` identity (`src.models.weights.model_identity`), the processor and the image
    folder. Once the main process has merged, the shards of other runs go."""
    run = fingerprint(code=code, params=params, model=model,
                      inputs={"processor": processor_digest(processor), "images": str(image_dir)})
    merged = map_shards(items, work, shards_dir=shards_dir, run=run, shard_size=shard_size,
                        state=state, key_column="image_id", empty=empty)
    if merged is not None:
        remove_stale_shards(shards_dir, run)
    return merged
