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


def encode_batch(
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[tuple[str, str]],
    *,
    image_token: str,
    num_image_tokens: int,
    max_length: int,
) -> list[EncodedText | MaskError]:
    """Ids and labels of (prompt, caption) pairs, at most `max_length` tokens each, or the
    MaskError that rules a pair out. Tokenises in batches (fast) and checks every mask.

    Truncation only ever shortens the answer; a pair whose prompt (image tokens included)
    leaves no room for one answer token gets MaskError("prompt_too_long").
    """
    expansion = image_token * num_image_tokens
    prompt_texts = [format_prompt(prompt).replace(image_token, expansion) for prompt, _ in pairs]
    unique_prompts = sorted(set(prompt_texts))
    prompt_ids = dict(zip(unique_prompts, tokenizer(unique_prompts)["input_ids"], strict=True))
    full_ids = tokenizer([text + format_answer(caption)
                          for text, (_, caption) in zip(prompt_texts, pairs, strict=True)])
    caption_ids = tokenizer([caption for _, caption in pairs], add_special_tokens=False)
    return [_mask(tokenizer, prompt_ids[text], [*ids, tokenizer.eos_token_id], caption, cap_ids,
                  num_image_tokens, max_length)
            for text, ids, (_, caption), cap_ids in zip(
                prompt_texts, full_ids["input_ids"], pairs, caption_ids["input_ids"], strict=True)]


def _mask(tokenizer: PreTrainedTokenizerBase, prompt_ids: list[int], full_ids: list[int],
          caption: str, caption_ids: list[int], num_image_tokens: int,
          max_length: int) -> EncodedText | MaskError:
    boundary = _common_prefix_length(prompt_ids, full_ids)
    answer_ids = full_ids[boundary:]
    expected = _normalised_decode(tokenizer, caption_ids)
    got = _normalised_decode(tokenizer, answer_ids[:-1])
    if got != expected or boundary != len(prompt_ids):
        return MaskError("mask_mismatch", f"supervised tokens decode to {got!r}, the caption "
                                          f"to {expected!r} (prompt {len(prompt_ids)} tokens, "
                                          f"answer starts at {boundary})")
    if len(answer_ids) < 2:
        return MaskError("unsupervised", f"caption {caption!r} has no tokens, only the EOS")
    if boundary + 1 > max_length:
        return MaskError("prompt_too_long", f"the prompt alone is {boundary} tokens "
                                            f"({num_image_tokens} image tokens), max_length "
                                            f"{max_length}")
    labels = [IGNORE_INDEX] * boundary + answer_ids
    return EncodedText(full_ids[:max_length], labels[:max_length])
