"""The training-example JSONL: the contract between augmentation and training.

One object a line:
    {"id": str, "image": "train2017/x.jpg", "kind": "full" | "region",
     "bbox": null | [x0, y0, x1, y1], "prompt": str, "caption": str, "meta": {...}}
`image` is relative to an image root given at training time; `bbox` is in
pixels of the original image.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.data.atomic import atomic_path

logger = logging.getLogger(__name__)

KINDS = ("full", "region")


class JsonlError(ValueError):
    """A malformed line; the message names the file, the line and the field."""


@dataclass(frozen=True)
class Example:
    id: str
    image: str
    kind: str
    bbox: tuple[float, float, float, float] | None
    prompt: str
    caption: str
    meta: dict[str, Any] = field(default_factory=dict)


def special_token_problem(text: str, reserved: Collection[str]) -> str | None:
    """Why `text` may not be a prompt or caption, or None: it holds one of the `reserved` texts
    (the tokenizer's special tokens, `src.models.llava.special_token_texts`)."""
    found = [token for token in reserved if token in text]
    if not found:
        return None
    return (f"contains the special token text {found[0]!r}, which the tokenizer reads as that "
            "token (a stray <image> misaligns the image features and crashes training)")


def _check(record: object, where: str, reserved: Collection[str]) -> Example:
    if not isinstance(record, dict):
        raise JsonlError(f"{where}: expected a JSON object")
    for key in ("id", "image", "kind", "prompt", "caption"):
        if not isinstance(record.get(key), str) or not record[key].strip():
            raise JsonlError(f"{where}: field '{key}' must be a non-empty string")
    for key in ("prompt", "caption"):
        if (problem := special_token_problem(record[key], reserved)) is not None:
            raise JsonlError(f"{where}: field '{key}' {problem}")
    if record["kind"] not in KINDS:
        raise JsonlError(f"{where}: field 'kind' must be one of {KINDS}, got {record['kind']!r}")
    bbox = record.get("bbox")
    if record["kind"] == "region" or bbox is not None:
        valid = (isinstance(bbox, list) and len(bbox) == 4
                 and all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
                 and bbox[0] < bbox[2] and bbox[1] < bbox[3])
        if not valid:
            raise JsonlError(f"{where}: field 'bbox' must be [x0, y0, x1, y1] with x0<x1, y0<y1")
        bbox = tuple(float(v) for v in bbox)
    meta = record.get("meta", {})
    if not isinstance(meta, dict):
        raise JsonlError(f"{where}: field 'meta' must be an object")
    unknown = set(record) - {"id", "image", "kind", "bbox", "prompt", "caption", "meta"}
    if unknown:
        raise JsonlError(f"{where}: unknown field '{sorted(unknown)[0]}'")
    return Example(record["id"], record["image"], record["kind"], bbox, record["prompt"],
                   record["caption"], meta)


@dataclass
class ExampleReader:
    """The examples of a JSONL file, read a line at a time (a file of a million examples
    is never held whole); `malformed` counts the lines skipped so far.

    By default the first malformed line raises JsonlError naming file, line
    and field; with `skip_malformed` such lines are counted and logged. A prompt or
    caption holding one of the `reserved` texts (the tokenizer's special tokens, see
    `src.models.llava.special_token_texts`) is malformed too.
    """

    path: Path
    skip_malformed: bool = False
    reserved: Collection[str] = ()
    malformed: int = 0

    def __iter__(self) -> Iterator[Example]:
        with open(self.path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{self.path}:{number}"
                try:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as error:
                        raise JsonlError(f"{where}: not valid JSON ({error.msg})") from error
                    example = _check(record, where, self.reserved)
                except JsonlError as error:
                    if not self.skip_malformed:
                        raise
                    logger.warning("skipping malformed line: %s", error)
                    self.malformed += 1
                    continue
                yield example


def read_examples(path: Path, skip_malformed: bool = False,
                  reserved: Collection[str] = ()) -> tuple[list[Example], int]:
    """Examples of a JSONL file, and how many malformed lines were skipped (see
    `ExampleReader`)."""
    reader = ExampleReader(path, skip_malformed, reserved)
    return list(reader), reader.malformed


def example_to_json(example: Example) -> str:
    record = {"id": example.id, "image": example.image, "kind": example.kind,
              "bbox": None if example.bbox is None else [round(v, 2) for v in example.bbox],
              "prompt": example.prompt, "caption": example.caption, "meta": example.meta}
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def write_examples(path: Path, examples: Iterable[Example]) -> int:
    """Write atomically, one sorted-key object a line (byte-identical for equal input)."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(example_to_json(example) + "\n")
            count += 1
    return count
