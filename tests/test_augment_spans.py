"""GroundingDINO prompts: text, phrase character spans, exact token positions, passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoProcessor

from src.augment.spans import build_prompt, phrase_token_positions, query_text, split_into_passes


def test_prompt_is_lowercase_dot_separated_and_terminated() -> None:
    prompt = build_prompt(["Red Car", "dog", "st. bernard?"])
    assert prompt.text == "red car. dog. st bernard."
    assert [prompt.text[a:b] for a, b in prompt.char_spans] == ["red car", "dog", "st bernard"]


def test_phrase_with_only_delimiters_is_refused() -> None:
    assert query_text(" . ? ") == ""
    with pytest.raises(ValueError, match="no text"):
        build_prompt(["dog", ". ."])


def test_token_positions_from_hand_built_wordpiece_offsets() -> None:
    # "red skateboard. dog." as WordPiece splits it:
    # [CLS] red skate ##board . dog . [SEP] [PAD] [PAD]
    offsets = [(0, 0), (0, 3), (4, 9), (9, 14), (14, 15), (16, 19), (19, 20), (0, 0), (0, 0),
               (0, 0)]
    spans = build_prompt(["red skateboard", "dog"]).char_spans
    assert phrase_token_positions(offsets, spans) == [[1, 2, 3], [5]]


def test_token_positions_need_offsets() -> None:
    with pytest.raises(ValueError, match="offsets"):
        phrase_token_positions([(0, 0), (0, 0)], [(0, 3)])


def test_token_positions_with_the_detector_tokenizer(tiny_models: dict[str, Path]) -> None:
    tokenizer = AutoProcessor.from_pretrained(tiny_models["grounding-dino"]).tokenizer
    prompt = build_prompt(["large red circle", "square", "small blue triangle"])
    encoded = tokenizer([prompt.text, "circle."], padding=True, return_offsets_mapping=True)
    # [CLS] large red circle . square . small blue triangle . [SEP]
    assert phrase_token_positions(encoded["offset_mapping"][0], prompt.char_spans) == [
        [1, 2, 3], [5], [7, 8, 9]]
    ids = encoded["input_ids"][0]
    assert [ids[i] for i in (0, 4, 6, 10, 11)] == [101, 1012, 1012, 1012, 102]


def test_passes_respect_the_limit_and_keep_order() -> None:
    # Costs with the ".": 4, 3, 5, 2; a prompt holds 2 special tokens + 8.
    passes, too_long = split_into_passes([3, 2, 4, 1], max_tokens=10)
    assert passes == [[0, 1], [2, 3]]
    assert too_long == []
    assert split_into_passes([3, 2, 4, 1], max_tokens=256) == ([[0, 1, 2, 3]], [])


def test_a_phrase_longer_than_the_limit_is_reported_not_cut() -> None:
    passes, too_long = split_into_passes([2, 9, 2], max_tokens=10)
    assert passes == [[0, 2]]
    assert too_long == [1]
