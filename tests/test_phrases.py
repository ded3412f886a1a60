"""Noun-phrase extraction: normalisation, junk filtering, spans, per-image caps."""

from __future__ import annotations

import pytest

from src.data.coco import CocoCaption
from src.data.noun_phrases import Phrase, extract_phrases, load_spacy, select_phrases


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


def _phrases(nlp, text: str) -> list[str]:
    return [p.phrase for p in extract_phrases(nlp, [CocoCaption(1, 7, text)], max_words=6)]


def test_determiners_stripped_and_lowercased(nlp) -> None:
    assert _phrases(nlp, "A Man riding a red bicycle.") == ["man", "red bicycle"]


def test_pronouns_and_non_objects_dropped(nlp) -> None:
    found = _phrases(nlp, "It sits on top of the table next to each other in front of a dog.")
    assert "it" not in found and "top" not in found and "front" not in found
    assert "each other" not in found
    assert {"table", "dog"} <= set(found)


def test_span_points_at_the_phrase_in_the_caption(nlp) -> None:
    text = "Two dogs play with THE Frisbee."
    for phrase in extract_phrases(nlp, [CocoCaption(1, 7, text)], max_words=6):
        assert text[phrase.span_start:phrase.span_end].lower() == phrase.phrase


def test_long_chunks_dropped(nlp) -> None:
    text = "A dog next to a big old rusty red fire truck."
    assert _phrases(nlp, text) == ["dog", "big old rusty red fire truck"]
    assert [p.phrase for p in extract_phrases(nlp, [CocoCaption(1, 7, text)], max_words=2)] == [
        "dog"]


def test_select_dedupes_ranks_by_mentions_and_caps() -> None:
    rows = [Phrase(1, 5, "dog", 0, 3), Phrase(2, 5, "cat", 0, 3), Phrase(3, 5, "cat", 4, 7),
            Phrase(4, 5, "ball", 0, 4), Phrase(5, 6, "tree", 0, 4)]
    kept = select_phrases(rows, max_per_image=2)
    assert [(p.image_id, p.phrase, p.caption_id) for p in kept] == [
        (5, "cat", 2), (5, "dog", 1), (6, "tree", 5)]
