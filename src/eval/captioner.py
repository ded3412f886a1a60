"""The model under evaluation: base LLaVA, optionally with a trained LoRA adapter merged in."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import torch
from peft import PeftModel
from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, ProcessorMixin

from src.data.jsonl import special_token_problem
from src.models.hub import load_pretrained
from src.models.llava import load_llava, load_processor, processor_image_size, special_token_texts
from src.params import check_prompts

logger = logging.getLogger(__name__)


def native_image_size(model_id: str, revision: str | None = None) -> int:
    """The vision tower's own input side (336 for llava-hf/llava-1.5-7b-hf)."""
    config = load_pretrained(AutoConfig.from_pretrained, model_id, revision=revision)
    return int(config.vision_config.image_size)


def load_captioner(model_id: str, adapter_dir: Path | None, *, device: torch.device,
                   dtype: torch.dtype, pad_to_square: bool = False,
                   revision: str | None = None, prompts: Mapping[str, str] | None = None,
                   ) -> tuple[LlavaForConditionalGeneration, ProcessorMixin]:
    """Base model (at `revision` of a hub id, None = main) plus optional adapter, ready for
    `generate`, with the matching processor.

    With an adapter the processor (and so the image size) is the one saved beside it by
    training; without, the base checkpoint's processor at its native size, padding images
    to a square first with `pad_to_square` (so the zero-shot base sees images as the
    adapters trained with `train.pad_to_square` do). The adapter is merged into the
    weights: generation then runs at the base model's speed. `prompts` (param key -> text)
    are refused, naming the param, when the processor's tokenizer reads special-token text
    in them: checked before the model loads.
    """
    if adapter_dir is not None:
        processor = load_pretrained(AutoProcessor.from_pretrained, str(adapter_dir))
        image_size = processor_image_size(processor)
    else:
        image_size = native_image_size(model_id, revision)
        processor = load_processor(model_id, image_size, pad_to_square, revision=revision)
    check_prompts(prompts or {},
                  partial(special_token_problem, reserved=special_token_texts(processor)))
    model = load_llava(model_id, image_size, dtype=dtype, revision=revision)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        logger.info("merged adapter %s into %s (image size %d)", adapter_dir, model_id, image_size)
    return model.to(device).eval(), processor
