"""LoRA placement and trainable parameters, image-size consistency, the 4-bit (QLoRA) path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from src.models.llava import (
    format_answer,
    format_prompt,
    image_token_count,
    load_llava,
    load_processor,
    processor_image_size,
)
from src.train.model import LoraSettings, parameter_counts, prepare_for_training

LM_ATTENTION = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"


# One torch thread: deterministic, and far faster than two on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lora(train_projector: bool, target: str = LM_ATTENTION) -> LoraSettings:
    return LoraSettings(r=8, alpha=16, dropout=0.0, target_regex=target,
                        train_projector=train_projector)


@pytest.fixture(scope="module")
def llava_dir(tiny_models: dict[str, Path]) -> str:
    return str(tiny_models["llava"])


@pytest.mark.parametrize("train_projector", [False, True])
def test_trainable_parameters_by_module(llava_dir: str, train_projector: bool) -> None:
    model = load_llava(llava_dir, 32, dtype=torch.float32)
    projector = sum(p.numel() for p in model.model.multi_modal_projector.parameters())
    counts = parameter_counts(prepare_for_training(
        model, _lora(train_projector), gradient_checkpointing=False, quantized=False))
    assert counts["vision_tower"][0] == 0 and counts["vision_tower"][1] > 0
    assert counts["lm_head"][0] == 0
    # LoRA: A (r x in) and B (out x r) on 4 projections of 2 layers, hidden 128.
    assert counts["language_model"][0] == 2 * 4 * (8 * 128 + 128 * 8)
    assert counts["multi_modal_projector"][0] == (projector if train_projector else 0)


def test_trained_weights_are_float32_over_a_bf16_base(llava_dir: str) -> None:
    model = load_llava(llava_dir, 32, dtype=torch.bfloat16)
    peft_model = prepare_for_training(model, _lora(True), gradient_checkpointing=False,
                                      quantized=False)
    dtypes = {(p.requires_grad, p.dtype) for p in peft_model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}


def test_a_plain_module_list_would_wrap_the_vision_tower(llava_dir: str) -> None:
    model = load_llava(llava_dir, 32, dtype=torch.float32)
    with pytest.raises(ValueError, match="vision_tower"):
        prepare_for_training(model, _lora(False, target=r".*\.(q_proj|v_proj)"),
                             gradient_checkpointing=False, quantized=False)


@pytest.mark.parametrize("image_size", [32, 48])
def test_image_size_is_consistent(llava_dir: str, image_size: int) -> None:
    """Processor crop, expanded image tokens and vision positions all follow image_size."""
    processor = load_processor(llava_dir, image_size)
    model = load_llava(llava_dir, image_size, dtype=torch.float32)
    patches = (image_size // 8) ** 2
    assert processor_image_size(processor) == image_size
    assert image_token_count(processor) == patches  # + 1 class token - 1 ("default")
    assert model.model.vision_tower.embeddings.position_embedding.num_embeddings == patches + 1
    inputs = processor(text=format_prompt("Describe.") + format_answer("a red circle."),
                       images=Image.new("RGB", (70, 50), (200, 30, 30)), return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (image_size, image_size)
    loss = model(**inputs, labels=inputs["input_ids"]).loss  # tokens == image features
    assert torch.isfinite(loss)
    # The resized table is CLIP's own interpolation of the checkpoint's 32-px positions.
    native = load_llava(llava_dir, 32, dtype=torch.float32).model.vision_tower
    with torch.no_grad():
        expected = native(inputs["pixel_values"], interpolate_pos_encoding=True).last_hidden_state
        got = model.model.vision_tower(inputs["pixel_values"]).last_hidden_state
    torch.testing.assert_close(got, expected)


def test_image_size_must_fit_the_patches(llava_dir: str) -> None:
    with pytest.raises(ValueError, match="multiple of the patch size"):
        load_processor(llava_dir, 44)


def test_qlora_trains_on_the_tiny_model(llava_dir: str) -> None:
    """nf4 language model (bitsandbytes runs on this CPU), full-precision vision and projector."""
    import bitsandbytes as bnb

    model = load_llava(llava_dir, 32, dtype=torch.bfloat16, load_in_4bit=True, device_map="cpu")
    layer = model.model.language_model.layers[0]
    assert isinstance(layer.self_attn.q_proj, bnb.nn.Linear4bit)
    assert isinstance(layer.mlp.up_proj, bnb.nn.Linear4bit)
    for module in (model.model.vision_tower.encoder.layers[0].self_attn.q_proj,
                   model.model.multi_modal_projector.linear_1, model.lm_head):
        assert not isinstance(module, bnb.nn.Linear4bit)
    peft_model = prepare_for_training(model, _lora(True), gradient_checkpointing=True,
                                      quantized=True)
    counts = parameter_counts(peft_model)
    assert counts["vision_tower"][0] == 0 and counts["language_model"][0] > 0
    assert model.is_activation_checkpointing
    processor = load_processor(llava_dir, 32)
    inputs = processor(text=[format_prompt("Describe.") + format_answer("a red circle.")],
                       images=[Image.new("RGB", (40, 40), (30, 200, 30))], return_tensors="pt")
    peft_model.train()
    loss = peft_model(**inputs, labels=inputs["input_ids"]).loss
    loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert torch.isfinite(loss) and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_a_clear_error_where_bitsandbytes_cannot_quantise(llava_dir: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import bitsandbytes.functional

    def no_backend(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", no_backend)
    with pytest.raises(RuntimeError, match=r"cannot quantise to 4 bit.*load_in_4bit=false"):
        load_llava(llava_dir, 32, dtype=torch.bfloat16, load_in_4bit=True, device_map="cpu")


def test_pad_to_square_keeps_the_edges_and_survives_saving(llava_dir: str,
                                                           tmp_path: Path) -> None:
    """A 2:1 image with a red left edge: centre-cropping cuts the red away, padding keeps it
    and fills the new rows with the mean colour (0 after normalisation)."""
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 8, 32))
    cropped = load_processor(llava_dir, 32)(images=image, text="<image>")["pixel_values"][0]
    padded_processor = load_processor(llava_dir, 32, pad_to_square=True)
    padded = padded_processor(images=image, text="<image>")["pixel_values"][0]
    assert cropped.shape == padded.shape == (3, 32, 32)
    assert cropped[0, 16, 0] < 0 < padded[0, 16, 0]  # red channel of the left edge
    assert float(abs(padded[:, 0, :]).max()) < 0.02  # top padding row: the mean colour
    padded_processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert processor_image_size(reloaded) == 32
    assert (reloaded(images=image, text="<image>")["pixel_values"][0] == padded).all()
