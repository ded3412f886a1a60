"""The training JSONL: round trip, byte stability, errors that name file, line and field."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from src.data.jsonl import Example, JsonlError, read_examples, write_examples

EXAMPLES = [
    Example("1-full-0", "train2017/000000000001.jpg", "full", None, "Describe.", "A dog.", {}),
    Example("1-region-0", "train2017/000000000001.jpg", "region", (1.0, 2.5, 30.0, 40.0),
            "Region?", "dog", {"phrase": "dog", "clip_score": 0.31}),
]


def test_round_trip_and_bytes_are_stable(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_examples(first, EXAMPLES) == 2
    write_examples(second, EXAMPLES)
    assert first.read_bytes() == second.read_bytes()
    assert read_examples(first) == (EXAMPLES, 0)


@pytest.mark.parametrize(("line", "field"), [
    ('{"id": "x", "image": "a.jpg", "kind": "full", "prompt": "p"}', "field 'caption'"),
    ('{"id": "x", "image": "a.jpg", "kind": "crop", "prompt": "p", "caption": "c"}',
     "field 'kind'"),
    ('{"id": "x", "image": "a.jpg", "kind": "region", "prompt": "p", "caption": "c", '
     '"bbox": [5, 5, 1, 9]}', "field 'bbox'"),
    ('{"id": "x", "image": "a.jpg", "kind": "full", "prompt": "p", "caption": "c", "x": 1}',
     "unknown field 'x'"),
    ('{"id": "x", "image": ', "not valid JSON"),
])
def test_malformed_line_names_file_line_and_field(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "train.jsonl"
    write_examples(path, EXAMPLES[:1])
    with open(path, "a") as handle:
        handle.write(line + "\n")
    with pytest.raises(JsonlError, match=f"train.jsonl:2: .*{field}"):
        read_examples(path)
    examples, skipped = read_examples(path, skip_malformed=True)
    assert (examples, skipped) == (EXAMPLES[:1], 1)


@pytest.mark.parametrize(("field", "text"), [("caption", "a <image> dog."),
                                             ("prompt", "Describe.</s>"),
                                             ("caption", "<s>")])
def test_reserved_text_in_a_prompt_or_caption_is_malformed(tmp_path: Path, field: str,
                                                           text: str) -> None:
    """The tokenizer reads special-token text as the token wherever it stands."""
    path = tmp_path / "train.jsonl"
    write_examples(path, [EXAMPLES[0], dataclasses.replace(EXAMPLES[0], **{field: text})])
    reserved = ("</s>", "<image>", "<s>")
    assert len(read_examples(path)[0]) == 2  # without reserved texts: a plain line
    with pytest.raises(JsonlError, match=f"train.jsonl:2: field '{field}' contains the special "
                                         "token text '<"):
        read_examples(path, reserved=reserved)
    assert read_examples(path, skip_malformed=True, reserved=reserved) == ([EXAMPLES[0]], 1)


def test_outputs_get_normal_permissions(tmp_path: Path) -> None:
    write_examples(tmp_path / "a.jsonl", EXAMPLES)
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o644 == 0o644
