"""Assistant-only labels: exact positions, the all-masked guard, truncation, mismatch checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from library_helpers import encode_example
from PIL import Image

from src.data.jsonl import Example
from src.models.llava import IGNORE_INDEX, format_answer, format_prompt, load_processor
from src.train.data import Collate, encode_examples
from src.train.masking import MaskError, check_supervised

PROMPT = "Provide a one-sentence caption for the provided image."
CAPTION = "A red circle on the left."
PROMPT_TOKENS = ["<s>", "user", ":", *["<image>"] * 16, "provide", "a", "one", "-", "sentence",
                 "caption", "for", "the", "provided", "image", ".", "assistant", ":"]
ANSWER_TOKENS = ["a", "red", "circle", "on", "the", "left", ".", "</s>"]


# One torch thread: deterministic, and far faster than two on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def processor(tiny_models: dict[str, Path]):
    return load_processor(str(tiny_models["llava"]), 32)


def _encode(processor, caption: str = CAPTION, max_length: int = 128, tokenizer=None):
    return encode_example(tokenizer or processor.tokenizer, PROMPT, caption,
                          image_token=processor.image_token, num_image_tokens=16,
                          max_length=max_length)


def test_labels_mask_the_user_turn_token_by_token(processor) -> None:
    encoded = _encode(processor)
    tokenizer = processor.tokenizer
    expected_ids = tokenizer.convert_tokens_to_ids(PROMPT_TOKENS + ANSWER_TOKENS)
    assert tokenizer.unk_token_id not in expected_ids
    assert encoded.input_ids == expected_ids
    n_prompt = len(PROMPT_TOKENS)
    assert encoded.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt  # image tokens included
    assert encoded.labels[n_prompt:] == tokenizer.convert_tokens_to_ids(ANSWER_TOKENS)
    assert encoded.labels[-1] == tokenizer.eos_token_id
    assert encoded.num_supervised == len(ANSWER_TOKENS)


def test_ids_equal_the_processors_own_expansion(processor) -> None:
    """The up-front tokenisation is what the processor produces for the same text + image."""
    full_text = format_prompt(PROMPT) + format_answer(CAPTION)
    ids = processor(text=full_text, images=Image.new("RGB", (40, 30)))["input_ids"][0]
    assert _encode(processor).input_ids == [*ids, processor.tokenizer.eos_token_id]


def test_guard_fires_on_an_all_masked_sample(processor) -> None:
    with pytest.raises(MaskError, match="unsupervised"):
        check_supervised([IGNORE_INDEX] * 5, "sample")
    encoded = _encode(processor)
    item = {"input_ids": encoded.input_ids, "labels": [IGNORE_INDEX] * len(encoded.labels),
            "pixel_values": None, "example_id": "x"}
    with pytest.raises(MaskError, match="unsupervised"):
        Collate(processor.tokenizer.pad_token_id)([item])


def test_a_caption_without_tokens_is_unsupervised(processor) -> None:
    with pytest.raises(MaskError) as error:
        _encode(processor, caption="")
    assert error.value.reason == "unsupervised"


class _BoundaryMerging:
    """A tokenizer that fuses the prompt's last token with the answer's first in the full
    text, as sentencepiece merges can: the prompt is then no prefix of the full text."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id

    def __call__(self, texts: list[str], **kwargs):
        encoded = self.tokenizer(texts, **kwargs)
        for row, text in enumerate(texts):
            if text != CAPTION and text.endswith(CAPTION):
                ids = encoded["input_ids"][row]
                colon = ids.index(self.tokenizer.convert_tokens_to_ids(":"), 3)
                fused = self.tokenizer.unk_token_id  # stands for one token spelling ": a"
                encoded["input_ids"][row] = [*ids[:colon], fused, *ids[colon + 2:]]
        return encoded

    def decode(self, ids):
        return self.tokenizer.decode(ids)


def test_a_boundary_mismatch_is_caught_not_trained_on(processor) -> None:
    with pytest.raises(MaskError) as error:
        _encode(processor, tokenizer=_BoundaryMerging(processor.tokenizer))
    assert error.value.reason == "mask_mismatch"


def test_truncation_cuts_only_the_answer(processor) -> None:
    n_prompt = len(PROMPT_TOKENS)
    encoded = _encode(processor, max_length=n_prompt + 2)
    assert len(encoded.input_ids) == n_prompt + 2
    assert encoded.input_ids.count(processor.image_token_id) == 16
    assert encoded.labels[n_prompt:] == processor.tokenizer.convert_tokens_to_ids(["a", "red"])
    with pytest.raises(MaskError) as error:
        _encode(processor, max_length=n_prompt)
    assert error.value.reason == "prompt_too_long"


def test_encode_examples_drops_and_counts(processor, tmp_path: Path) -> None:
    examples = [Example("ok", "a.jpg", "full", None, PROMPT, CAPTION),
                Example("long", "b.jpg", "full", None, PROMPT + " the" * 200, CAPTION),
                Example("escape", "../c.jpg", "full", None, PROMPT, CAPTION)]
    samples, skipped = encode_examples(examples, processor, max_length=64, drop_bad_masks=False,
                                       table_path=tmp_path / "s.arrow")
    assert [s.example_id for s in samples] == ["ok", "escape"]  # a path is checked when read
    assert samples[0].image == "a.jpg"
    assert skipped.as_dict() == {"prompt_too_long": ["long"]}


class _WithTokenizer:
    """`processor` with another tokenizer, everything else its own."""

    def __init__(self, processor, tokenizer) -> None:
        self._processor = processor
        self.tokenizer = tokenizer

    def __getattr__(self, name: str):
        return getattr(self._processor, name)

    def __call__(self, *args, **kwargs):
        return self._processor(*args, **kwargs)


def test_drop_bad_masks_counts_each_drop_by_reason(processor, tmp_path: Path) -> None:
    """Two boundary mismatches (the merging tokenizer fuses CAPTION onto the prompt), one
    empty caption, one over-long prompt: each dropped and counted, the good one kept."""
    examples = [Example("ok", "a.jpg", "full", None, PROMPT, "a blue square."),
                Example("fused1", "b.jpg", "full", None, PROMPT, CAPTION),
                Example("empty", "c.jpg", "full", None, PROMPT, ""),
                Example("fused2", "d.jpg", "full", None, PROMPT, CAPTION),
                Example("long", "e.jpg", "full", None, PROMPT + " the" * 200, "a circle.")]
    merging = _WithTokenizer(processor, _BoundaryMerging(processor.tokenizer))
    samples, skipped = encode_examples(examples, merging, max_length=64, drop_bad_masks=True,
                                       table_path=tmp_path / "s.arrow")
    assert [s.example_id for s in samples] == ["ok"]
    assert skipped.as_dict() == {"mask_mismatch": ["fused1", "fused2"], "unsupervised": ["empty"],
                                 "prompt_too_long": ["long"]}
    with pytest.raises(MaskError, match="example fused1: mask_mismatch"):
        encode_examples(examples, merging, max_length=64, drop_bad_masks=False,
                        table_path=tmp_path / "failed.arrow")
    assert not (tmp_path / "failed.arrow").exists()  # a failed encode leaves no file


@pytest.mark.parametrize("prompt, caption", [
    (PROMPT, CAPTION),
    ("Look:<image> twice.", CAPTION),  # a second image token inside the prompt text
    (PROMPT, "A <image> in the caption."),  # in the answer: a mismatch either way
])
def test_compact_tokenisation_equals_tokenising_the_expanded_text(processor, prompt,
                                                                  caption) -> None:
    """Ids are computed with one image token per `<image>` and expanded afterwards: they
    must equal tokenising the text with every `<image>` written out 16 times."""
    tokenizer, token = processor.tokenizer, processor.image_token
    expanded = (format_prompt(prompt) + format_answer(caption)).replace(token, token * 16)
    reference = [*tokenizer(expanded)["input_ids"], tokenizer.eos_token_id]
    encode = {"image_token": token, "num_image_tokens": 16, "max_length": 512}
    if token in caption:  # the answer holds 16 image tokens, the caption alone one
        with pytest.raises(MaskError, match="mask_mismatch"):
            encode_example(tokenizer, prompt, caption, **encode)
        return
    encoded = encode_example(tokenizer, prompt, caption, **encode)
    assert encoded.input_ids == reference
    prompt_length = len(tokenizer(format_prompt(prompt).replace(token, token * 16))["input_ids"])
    assert encoded.labels == [IGNORE_INDEX] * prompt_length + reference[prompt_length:]
