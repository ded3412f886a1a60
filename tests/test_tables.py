"""Parquet tables read back lean: only the columns asked for, narrowed where they fit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from src.data.tables import read_table, write_table


def test_read_only_the_columns_asked_for_narrowed(tmp_path: Path) -> None:
    frame = pd.DataFrame({"image_id": [3, 1], "width": [640, 2**31 - 1], "phrase": ["a", "b"],
                          "unused": [0.5, 0.25]})
    write_table(frame, tmp_path / "t.parquet", {"counts": 2})
    lean, metadata = read_table(tmp_path / "t.parquet", categorical=["phrase"],
                                columns=["image_id", "width", "phrase"],
                                narrow={"width": "int32"})
    assert metadata == {"counts": 2}
    assert list(lean.columns) == ["image_id", "width", "phrase"]
    assert lean.dtypes.astype(str).tolist() == ["int64", "int32", "category"]
    assert lean["width"].tolist() == [640, 2**31 - 1]


def test_a_value_that_does_not_fit_the_narrow_type_raises(tmp_path: Path) -> None:
    write_table(pd.DataFrame({"width": [640, 2**31]}), tmp_path / "t.parquet", {})
    with pytest.raises(pa.ArrowInvalid, match="not in range"):
        read_table(tmp_path / "t.parquet", narrow={"width": "int32"})
