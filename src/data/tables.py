"""Parquet tables that carry their stage's counts along, in the file's own metadata.

The counts a later stage reports (images skipped and why, phrases queried,
candidates dropped) travel inside the Parquet schema metadata of the table they
describe, so there is no side file to keep in step with it.

Every page is written with its CRC and checked when read: a damaged page raises OSError
instead of coming back as other numbers (Parquet only checks its footer by itself).
"""

from __future__ import annotations

import json
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


def read_table(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The table, every page checked against its checksum, and its metadata."""
    return pd.read_parquet(path, page_checksum_verification=True), read_metadata(path)

