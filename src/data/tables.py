"""Parquet tables that carry their stage's counts along, in the file's own metadata.

The counts a later stage reports (images skipped and why, phrases queried,
candidates dropped) travel inside the Parquet schema metadata of the table they
describe, so there is no side file to keep in step with it.

Every page is written with its CRC and checked when read: a damaged page raises OSError
instead of coming back as other numbers (Parquet only checks its footer by itself).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from src.data.atomic import atomic_path

METADATA_KEY = b"augment"


def write_table(frame: pd.DataFrame, path: Path, metadata: dict[str, Any]) -> None:
    """Write `frame` atomically with `metadata` (JSON-serialisable) in its schema."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    payload = json.dumps(metadata, sort_keys=True).encode("utf-8")
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), METADATA_KEY: payload})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, write_page_checksum=True)


def read_metadata(path: Path) -> dict[str, Any]:
    """The metadata written with the table; {} for a Parquet file written otherwise."""
    raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


def read_table(path: Path, categorical: Sequence[str] = (), columns: Sequence[str] | None = None,
               narrow: Mapping[str, str] | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The frame (only `columns`, when given), every page checked against its checksum, and
    its metadata. `categorical` string columns are read as pandas categoricals: one small
    code per row instead of one Python string (5.9M rows of file names, phrases and
    captions at COCO scale take 1.2 GB as strings, 70 MB as codes). `narrow` casts columns
    to smaller Arrow types ("int32") before conversion; a value that does not fit raises.

    The frame's columns live in Arrow's memory pool, which keeps freed buffers: once the
    frame is gone, `release_unused` hands them back."""
    table = pq.read_table(path, columns=None if columns is None else list(columns),
                          read_dictionary=list(categorical), page_checksum_verification=True)
    for name, kind in (narrow or {}).items():
        table = table.set_column(table.schema.get_field_index(name), name,
                                 table[name].cast(kind))
    frame = table.to_pandas(self_destruct=True, split_blocks=True)  # column by column
    del table
    release_unused()
    return frame, read_metadata(path)


def release_unused() -> None:
    """Hand the buffers Arrow's pool keeps after they are freed back to the system."""
    pa.default_memory_pool().release_unused()

