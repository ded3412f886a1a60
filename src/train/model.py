"""LoRA on LLaVA's language model; the vision tower stays frozen, the projector may train."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import LlavaForConditionalGeneration

logger = logging.getLogger(__name__)

# Parameter-name fragments naming LLaVA's parts, checked in this order.
MODULE_GROUPS = ("vision_tower", "multi_modal_projector", "language_model", "lm_head")
PROJECTOR = "multi_modal_projector"


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: int
    dropout: float
    target_regex: str  # full-name regex: must match language-model modules only
    train_projector: bool


def peft_config(settings: LoraSettings) -> LoraConfig:
    """A string `target_modules` is a full-match regex over module names; a list such as
    ["q_proj", "v_proj"] would also wrap the CLIP tower's attention."""
    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_regex,
        modules_to_save=[PROJECTOR] if settings.train_projector else None,
        bias="none",
    )


def prepare_for_training(model: LlavaForConditionalGeneration, settings: LoraSettings, *,
                         gradient_checkpointing: bool, quantized: bool) -> PeftModel:
    """Wrap `model` with LoRA; every base weight is frozen except a trained projector copy.

    The model is returned in train mode: `from_pretrained` gives eval mode, which
    `get_peft_model` does not change, and transformers checkpoints a layer (and LoRA drops
    out) only in train mode.

    Raises ValueError when the regex wraps a vision-tower or projector module.
    """
    model.config.get_text_config().use_cache = False  # no KV cache in training
    if quantized:  # norms and unquantised layers to float32, base weights frozen
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    peft_model = get_peft_model(model, peft_config(settings))
    if gradient_checkpointing:  # after LoRA: peft would hook the embeddings again
        model.activation_checkpointing_enable(
            activation_checkpointing_kwargs={"use_reentrant": False})
        # Non-reentrant checkpointing needs no inputs that require grad. transformers sets
        # them anyway on every embedding, the frozen vision tower's too, so each backward
        # pass would recompute and back-propagate through the whole tower for nothing.
        model.disable_input_require_grads()
    for param in peft_model.parameters():  # float32 master weights under bf16 autocast
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    outside = sorted({name.split(".lora_")[0] for name, _ in peft_model.named_parameters()
                      if ".lora_" in name and ("vision_tower" in name or PROJECTOR in name)})
    if outside:
        raise ValueError(f"lora_target {settings.target_regex!r} wraps modules outside the "
                         f"language model, e.g. {outside[0]}: restrict it to language_model")
    peft_model.train()
    return peft_model


def parameter_counts(model: PeftModel) -> dict[str, tuple[int, int]]:
    """(trainable, total) parameters per part of LLaVA (MODULE_GROUPS; LoRA counts under
    the part it adapts). A 4-bit weight counts its stored elements, not its logical size."""
    trainable, total = Counter(), Counter()
    for name, param in model.named_parameters():
        group = next((g for g in MODULE_GROUPS if g in name), "other")
        total[group] += param.numel()
        if param.requires_grad:
            trainable[group] += param.numel()
    return {group: (trainable[group], total[group]) for group in total}
