"""Token ids and assistant-only labels for one LLaVA-1.5 training example.

The sequence is `USER: <image>\\n{prompt} ASSISTANT: {caption}</s>` with `<image>`
expanded to one token per image feature. Labels are IGNORE_INDEX on the whole USER turn
(every image token included); the loss is on the caption tokens and the EOS only.

The answer boundary is found by tokenising the prompt and the full text and taking their
common prefix, then checked: the supervised tokens must decode to exactly what the
caption alone decodes to, followed by EOS. A tokenisation mismatch that would mask a
whole answer (upstream LLaVA's silent "loss 0" bug) or leak prompt tokens into the loss
raises MaskError instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from src.models.llava import IGNORE_INDEX, format_answer, format_prompt

MASK_SKIP_REASONS = ("prompt_too_long", "mask_mismatch", "unsupervised")


class MaskError(ValueError):
    """An example that cannot be trained on; `reason` is one of MASK_SKIP_REASONS."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class EncodedText:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX where there is no loss

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


def check_supervised(labels: Sequence[int], where: str) -> None:
    """Raise MaskError when no token of `labels` carries loss."""
    if all(label == IGNORE_INDEX for label in labels):
        raise MaskError("unsupervised", f"{where}: every label is {IGNORE_INDEX}")


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def _normalised_decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> str:
    return " ".join(tokenizer.decode(list(ids)).split())


@dataclass(frozen=True)
class CompactText:
    """An encoded pair with each image token held once: `EncodedText` at a few hundred
    bytes instead of one list entry per image feature (576 for LLaVA-1.5)."""

    ids: list[int]  # token ids, each image token once, before truncation
    image_token_id: int
    num_image_tokens: int
    prompt_length: int  # tokens without loss, image tokens expanded
    length: int  # tokens kept after truncation, image tokens expanded

    def expand(self) -> EncodedText:
        ids = _expand(self.ids, self.image_token_id, self.num_image_tokens)[:self.length]
        return EncodedText(ids, [IGNORE_INDEX] * self.prompt_length + ids[self.prompt_length:])


def _expand(ids: Sequence[int], image_token_id: int, num_image_tokens: int) -> list[int]:
    """`ids` with every image token repeated `num_image_tokens` times."""
    if image_token_id not in ids:
        return list(ids)
    expanded: list[int] = []
    for token in ids:
        if token == image_token_id:
            expanded += [token] * num_image_tokens
        else:
            expanded.append(token)
    return expanded


def encode_compact(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    image_token: str,
    num_image_tokens: int,
    max_length: int,
) -> list[CompactText | MaskError]:
    """Ids and labels of (prompt, caption) pairs, at most `max_length` tokens each, or the
    MaskError that rules a pair out. Tokenises in batches (fast) and checks every mask.

    Truncation only ever shortens the answer; a pair whose prompt (image tokens included)
    leaves no room for one answer token gets MaskError("prompt_too_long").

    The image token is an added token, tokenised alone whatever surrounds it, so the text
    is tokenised with one image token per `<image>` and the run expanded afterwards: the
    same ids as tokenising the expanded text, at 1/576 of the work and memory.
    """
    (image_ids,) = tokenizer([image_token], add_special_tokens=False)["input_ids"]
    if len(image_ids) != 1:
        raise ValueError(f"the tokenizer splits the image token {image_token!r} into "
                         f"{image_ids}: it must be one added token")
    image_token_id = image_ids[0]
    prompt_texts = [format_prompt(prompt) for prompt, _ in pairs]
    unique_prompts = sorted(set(prompt_texts))
    prompt_ids = dict(zip(unique_prompts, tokenizer(unique_prompts)["input_ids"], strict=True))
    full_ids = tokenizer([text + format_answer(caption)
                          for text, (_, caption) in zip(prompt_texts, pairs, strict=True)])
    caption_ids = tokenizer([caption for _, caption in pairs], add_special_tokens=False)
    return [_mask(tokenizer, prompt_ids[text], [*ids, tokenizer.eos_token_id], caption, cap_ids,
                  image_token_id, num_image_tokens, max_length)
            for text, ids, (_, caption), cap_ids in zip(
                prompt_texts, full_ids["input_ids"], pairs, caption_ids["input_ids"], strict=True)]


def encode_batch(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    image_token: str,
    num_image_tokens: int,
    max_length: int,
) -> list[EncodedText | MaskError]:
    """`encode_compact` with the image tokens expanded."""
    return [result if isinstance(result, MaskError) else result.expand()
            for result in encode_compact(tokenizer, pairs, image_token=image_token,
                                         num_image_tokens=num_image_tokens,
                                         max_length=max_length)]


def _mask(tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], full_ids: list[int],
          caption: str, caption_ids: list[int], image_token_id: int, num_image_tokens: int,
          max_length: int) -> CompactText | MaskError:
    compact_boundary = _common_prefix_length(prompt_ids, full_ids)
    extra = num_image_tokens - 1  # ids each image token adds when expanded
    boundary = compact_boundary + extra * full_ids[:compact_boundary].count(image_token_id)
    prompt_length = len(prompt_ids) + extra * prompt_ids.count(image_token_id)
    answer_ids = _expand(full_ids[compact_boundary:], image_token_id, num_image_tokens)
    expected = _normalised_decode(tokenizer, caption_ids)
    got = _normalised_decode(tokenizer, answer_ids[:-1])
    if got != expected or boundary != prompt_length:
        return MaskError("mask_mismatch", f"supervised tokens decode to {got!r}, the caption "
                                          f"to {expected!r} (prompt {prompt_length} tokens, "
                                          f"answer starts at {boundary})")
    if len(answer_ids) < 2:
        return MaskError("unsupervised", f"caption {caption!r} has no tokens, only the EOS")
    if boundary + 1 > max_length:
        return MaskError("prompt_too_long", f"the prompt alone is {boundary} tokens "
                                            f"({num_image_tokens} image tokens), max_length "
                                            f"{max_length}")
    return CompactText(full_ids, image_token_id, num_image_tokens, boundary,
                       min(boundary + len(answer_ids), max_length))

