"""GroundingDINO text queries: phrases joined into "a. b." prompts, and each phrase's tokens.

GroundingDINO reads a prompt as lower-case phrases, each ended by ".": it lets a
token attend only to the tokens of its own phrase and scores every box against
every token. A box's score for a phrase is therefore read off that phrase's token
positions, which we find from the tokenizer's character offsets rather than by
decoding tokens back to text (exact for any tokenizer with offsets).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Characters GroundingDINO treats as phrase delimiters ('.' and '?' are special tokens).
DELIMITERS = (".", "?")
# [CLS] and [SEP] around every prompt.
SPECIAL_TOKENS_PER_PROMPT = 2


def query_text(phrase: str) -> str:
    """The phrase as GroundingDINO should read it: lower case, no delimiter inside it."""
    text = phrase.lower()
    for delimiter in DELIMITERS:
        text = text.replace(delimiter, " ")
    return " ".join(text.split())


@dataclass(frozen=True)
class Prompt:
    text: str
    char_spans: tuple[tuple[int, int], ...]  # [start, end) of each phrase in `text`


def build_prompt(phrases: Sequence[str]) -> Prompt:
    """"red car. dog." from ["red car", "dog"], with each phrase's character span."""
    parts, spans, start = [], [], 0
    for phrase in phrases:
        text = query_text(phrase)
        if not text:
            raise ValueError(f"phrase {phrase!r} has no text once delimiters are removed")
        spans.append((start, start + len(text)))
        parts.append(f"{text}.")
        start += len(text) + 2  # the "." and the space after it
    return Prompt(" ".join(parts), tuple(spans))


def phrase_token_positions(offsets: Sequence[tuple[int, int]],
                           char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token positions of each phrase: the tokens whose characters lie inside its span.

    `offsets` is the tokenizer's offset mapping for the prompt; special and padding
    tokens have empty offsets and belong to no phrase, nor do the "." tokens.
    """
    positions: list[list[int]] = [[] for _ in char_spans]
    for index, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        for phrase, (span_start, span_end) in enumerate(char_spans):
            if span_start <= start and end <= span_end:
                positions[phrase].append(index)
                break
    for phrase, found in enumerate(positions):
        if not found:
            raise ValueError(f"phrase {phrase} (chars {char_spans[phrase]}) got no token; "
                             "the tokenizer must return character offsets")
    return positions


def split_into_passes(token_counts: Sequence[int], max_tokens: int) -> tuple[list[list[int]],
                                                                            list[int]]:
    """Group phrases, in order, into prompts of at most `max_tokens` tokens each.

    `token_counts[i]` is phrase i's token count without special tokens; each phrase
    also costs its "." and each prompt its [CLS] and [SEP]. Returns the phrase
    indices of every pass, and the phrases too long to fit even alone (never
    truncated: the caller counts them).
    """
    passes: list[list[int]] = []
    too_long: list[int] = []
    used = max_tokens  # forces a new pass for the first phrase
    for index, count in enumerate(token_counts):
        cost = count + 1
        if SPECIAL_TOKENS_PER_PROMPT + cost > max_tokens:
            too_long.append(index)
            continue
        if used + cost > max_tokens:
            passes.append([])
            used = SPECIAL_TOKENS_PER_PROMPT
        passes[-1].append(index)
        used += cost
    return passes, too_long

