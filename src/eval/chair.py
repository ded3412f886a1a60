"""CHAIR, object hallucination in captions (Rohrbach, Hendricks, Burns, Darrell, Saenko,
"Object Hallucination in Image Captioning", EMNLP 2018).

A caption *mentions* an object where a word, or a word sequence, of the object vocabulary
occurs in it; the mention is *hallucinated* when that object is not among the image's objects.
CHAIR_i = hallucinated mentions / all mentions (0 when nothing is mentioned); CHAIR_s =
captions with at least one hallucinated mention / all captions. Every occurrence counts, as in
the reference code ("a dog and a dog" is two mentions). An image's objects are the categories
of its instance annotations (crowd ones included) plus every object its reference captions
mention, read by the same rules.

**COCO** (every category of the instances file is a COCO category): the vocabulary is the
published synonym list (assets/chair_synonyms.txt; source and licence in its header) with the
rules of the reference code (LisaAnne/Hallucination `utils/chair.py`), restated:

- a multi-word synonym is one mention, longest first: "hot dog" is a hot dog, not a dog;
  "teddy bear", "stop sign", "cell phone" likewise;
- "baby"/"adult" + an animal word names that animal, not a person ("baby elephant");
  "passenger" + jet/train names the vehicle; "toilet seat" names the toilet; "home plate" and
  "train track" name nothing (no plate, no train);
- "seat" names no chair in a caption that says "toilet" ("the seat of the toilet").

**Demo** (any other categories, e.g. the synthetic "red circle"): each category name is its
own word sequence, and its last word alone names the kind: "a circle" is hallucinated only
where the image has no circle of any colour. Size and place words are no objects: calling a
small red circle "large" is no hallucination (CIDEr sees that). The references, written from
the exact shapes, add nothing to the instances there.

**Words**: spaCy tokens; a token matches a vocabulary word by its lower-case text or, for a
noun, by its lemma ("men" -> man, "knives" -> knife, "scissors" by its text). The reference
singularizes every token with `pattern` and tokenizes with nltk. Compared on the same captions
in tests/test_chair.py, the differences kept on purpose:

- "motor bike" and "cheesecake" count (motorcycle, cake): the published list has a stray
  space before each, so the reference never matches them; "iPhone" counts (it never matches
  the reference's lower-cased captions).
- "stove top oven" is one oven mention (the reference counts "stove" and "oven": its word
  pairs never reach a three-word synonym).
- A hyphenated pair reads as the two words: "hot-dog" is a hot dog, "teddy-bear" a teddy bear
  (the reference keeps "hot-dog" as one unknown token: no mention).
- Only nouns are lemmatized: "skiing" stays "skiing" (no skis). A plural that spaCy tags as
  a verb ("dogs" in "dogs run") is missed where its text is not in the list.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from spacy.language import Language
from spacy.tokens import Doc

from src.data.coco import load_image_categories
from src.data.noun_phrases import load_spacy
from src.eval.intervals import mean_ci, ratio_ci, ratio_of_totals

SYNONYMS_PATH = Path(__file__).parent / "assets" / "chair_synonyms.txt"
ANIMAL_WORDS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra",
                "giraffe", "animal", "cub")  # after "baby"/"adult": the animal, not a person
PASSENGER_VEHICLES = ("jet", "train")  # after "passenger": the vehicle, not a person
NAMES_NOTHING = ("home plate", "train track")  # read as one word that names no object
NOUN_TAGS = frozenset({"NOUN", "PROPN"})
SPACY_PIPES_OFF = ("ner", "parser")  # the lemmatizer needs only the tagger
SPACY_BATCH = 256

Words = tuple[str, ...]


@dataclass(frozen=True)
class ObjectVocabulary:
    """Which word sequences name which object, and which objects a category makes present."""

    phrases: Mapping[Words, str | None]  # None: read as one word that names no object
    category_objects: Mapping[str, frozenset[str]]  # also: an object -> the objects it implies
    # a word that names nothing in a caption that holds the other word ("seat" -> "toilet")
    void_beside: Mapping[str, str] = field(default_factory=dict)

    @property
    def longest(self) -> int:
        return max(len(words) for words in self.phrases)

    def implied(self, name: str) -> frozenset[str]:
        """The objects present where `name` is: itself, and the kind of a demo shape."""
        return self.category_objects.get(name, frozenset({name}))


def read_synonyms(path: Path = SYNONYMS_PATH) -> list[list[str]]:
    """The synonym groups, each its category name first; entries stripped and lower-cased."""
    groups = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            groups.append([word.strip().lower() for word in line.split(",") if word.strip()])
    return groups


def coco_vocabulary(path: Path = SYNONYMS_PATH) -> ObjectVocabulary:
    """The published COCO synonyms plus the reference code's word-pair rules."""
    groups = read_synonyms(path)
    phrases: dict[Words, str | None] = {tuple(word.split()): group[0]
                                        for group in groups for word in group}
    for qualifier, animal in itertools.product(("baby", "adult"), ANIMAL_WORDS):
        phrases[(qualifier, animal)] = phrases.get((animal,))
    for vehicle in PASSENGER_VEHICLES:
        phrases[("passenger", vehicle)] = phrases[(vehicle,)]
    phrases[("toilet", "seat")] = phrases[("toilet",)]
    phrases.update({tuple(text.split()): None for text in NAMES_NOTHING})
    return ObjectVocabulary(phrases, {group[0]: frozenset({group[0]}) for group in groups},
                            {"seat": "toilet"})


def category_vocabulary(names: Iterable[str]) -> ObjectVocabulary:
    """Categories named as captions name them (the demo's "red circle"); the last word alone
    names the kind, present wherever a category of that kind is."""
    phrases: dict[Words, str | None] = {}
    objects = {}
    for name in names:
        words = tuple(name.lower().split())
        phrases[words] = name
        phrases[words[-1:]] = words[-1]
        objects[name] = frozenset({name, words[-1]})
    return ObjectVocabulary(phrases, objects)


def vocabulary_for(category_names: Iterable[str]) -> ObjectVocabulary:
    """COCO's synonyms where every category is a COCO category, else the categories' names."""
    names = list(category_names)
    coco = coco_vocabulary()
    return coco if set(names) <= coco.category_objects.keys() else category_vocabulary(names)


@dataclass(frozen=True)
class Mention:
    text: str  # as written in the caption
    object: str  # what it names: the category name (COCO), or a demo shape or kind
    start: int  # character offsets in the caption
    end: int


@dataclass(frozen=True)
class _Token:
    forms: tuple[str, ...]  # lower-case text, then a noun's lemma where it differs
    start: int
    end: int


def _tokens(doc: Doc) -> list[_Token]:
    tokens = []
    for token in doc:
        if (token.text == "-" and token.i > 0 and not doc[token.i - 1].whitespace_
                and not token.whitespace_):
            continue  # "hot-dog" reads as "hot dog"
        forms = [token.lower_]
        if token.pos_ in NOUN_TAGS and token.lemma_.lower() != token.lower_:
            forms.append(token.lemma_.lower())
        tokens.append(_Token(tuple(forms), token.idx, token.idx + len(token)))
    return tokens


def _mentions(text: str, tokens: Sequence[_Token],
              vocabulary: ObjectVocabulary) -> tuple[Mention, ...]:
    present = {form for token in tokens for form in token.forms}
    void = {word for word, other in vocabulary.void_beside.items() if other in present}
    mentions = []
    start = 0
    while start < len(tokens):
        step = 1
        for length in range(min(vocabulary.longest, len(tokens) - start), 0, -1):
            span = tokens[start:start + length]
            key = next((words for words in itertools.product(*(t.forms for t in span))
                        if words in vocabulary.phrases
                        and not (length == 1 and words[0] in void)), None)
            if key is not None:
                name = vocabulary.phrases[key]
                if name is not None:
                    begin, end = span[0].start, span[-1].end
                    mentions.append(Mention(text[begin:end], name, begin, end))
                step = length
                break
        start += step
    return tuple(mentions)


def find_mentions(texts: Sequence[str], vocabulary: ObjectVocabulary,
                  nlp: Language) -> list[tuple[Mention, ...]]:
    """The object mentions of each text, in order of appearance."""
    return [_mentions(text, _tokens(doc), vocabulary)
            for text, doc in zip(texts, nlp.pipe(texts, batch_size=SPACY_BATCH), strict=True)]


@dataclass(frozen=True)
class ChairCaption:
    mentions: tuple[Mention, ...]
    hallucinated: tuple[Mention, ...]  # the mentions whose object the image does not hold


def image_objects(image_ids: Iterable[int], categories: Mapping[int, Iterable[str]],
                  references: Mapping[int, Sequence[str]], vocabulary: ObjectVocabulary,
                  nlp: Language) -> dict[int, frozenset[str]]:
    """Per image: its instance categories plus what its reference captions mention."""
    objects = {image_id: {obj for name in categories.get(image_id, ())
                          for obj in vocabulary.implied(name)} for image_id in image_ids}
    pairs = [(image_id, text) for image_id in objects for text in references.get(image_id, ())]
    found = find_mentions([text for _, text in pairs], vocabulary, nlp)
    for (image_id, _), mentions in zip(pairs, found, strict=True):
        objects[image_id].update(obj for m in mentions for obj in vocabulary.implied(m.object))
    return {image_id: frozenset(names) for image_id, names in objects.items()}


def score_chair(captions: Mapping[int, str], objects: Mapping[int, frozenset[str]],
                vocabulary: ObjectVocabulary, nlp: Language) -> dict[int, ChairCaption]:
    """Each caption's mentions, and which of them its image (`objects`) does not hold."""
    image_ids = sorted(captions)
    found = find_mentions([captions[i] for i in image_ids], vocabulary, nlp)
    return {image_id: ChairCaption(mentions, tuple(m for m in mentions
                                                   if m.object not in objects[image_id]))
            for image_id, mentions in zip(image_ids, found, strict=True)}


def chair_problem(instances_path: Path | None) -> str | None:
    """Why CHAIR cannot be computed (no instances file), or None."""
    if instances_path is None:
        return "no instances file given (--instances)"
    if not Path(instances_path).is_file():
        return f"instances file not found: {instances_path}"
    return None


def chair_per_image(captions: Mapping[int, str], references: Mapping[int, Sequence[str]],
                    instances_path: Path) -> dict[int, ChairCaption]:
    """CHAIR of each caption against its image's instances and references (see the module)."""
    category_names, categories = load_image_categories(instances_path)
    vocabulary = vocabulary_for(category_names)
    nlp = load_spacy(disable=SPACY_PIPES_OFF)
    objects = image_objects(captions, categories, references, vocabulary, nlp)
    return score_chair(captions, objects, vocabulary, nlp)


def chair_counts(per_image: Mapping[int, ChairCaption],
                 image_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Mentions and hallucinated mentions per image, in `image_ids` order."""
    return (np.array([len(per_image[i].mentions) for i in image_ids], dtype=np.int64),
            np.array([len(per_image[i].hallucinated) for i in image_ids], dtype=np.int64))


def chair_metrics(per_image: Mapping[int, ChairCaption], *, num_resamples: int,
                  seed: int) -> dict[str, float | int | list[float]]:
    """chair_i, chair_s, their 95 % bootstrap intervals over images (sorted ids, the draws
    every other interval of the evaluation uses) and the mention counts."""
    mentions, hallucinated = chair_counts(per_image, sorted(per_image))
    any_hallucinated = (hallucinated > 0).astype(np.float64)
    return {
        "chair_i": ratio_of_totals(hallucinated.sum(), mentions.sum()),
        "chair_s": float(any_hallucinated.mean()),
        "chair_i_ci95": list(ratio_ci(hallucinated, mentions, num_resamples=num_resamples,
                                      seed=seed)),
        "chair_s_ci95": list(mean_ci(any_hallucinated, num_resamples=num_resamples,
                                     seed=seed)),
        "chair_mentions": int(mentions.sum()),
        "chair_hallucinated": int(hallucinated.sum()),
    }
