"""LLaVA-1.5 loading and chat format, shared by training and evaluation.

One code path for a hub id (`llava-hf/llava-1.5-7b-hf`) and a local tiny checkpoint. The
image size is a single fact applied in three places that must agree: the processor's
resize/crop, the number of `<image>` tokens it expands (follows the pixel size), and the
vision tower's position embeddings (resized once at load time when the size differs
from the checkpoint's).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    BitsAndBytesConfig,
    LlavaForConditionalGeneration,
    ProcessorMixin,
)
from transformers.image_utils import SizeDict
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from src.models.device_policy import resolve_device
from src.models.hub import load_pretrained

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of every token without loss (the USER turn, image tokens, padding)
# Kept in full precision under QLoRA: by module-name prefix (a bare substring skips nothing).
# What carries over when the checkpoint's CLIP image processor becomes LLaVA's padding one.
PADDED_PROCESSOR_KEYS = ("size", "crop_size", "resample", "image_mean", "image_std",
                         "do_resize", "do_center_crop", "do_rescale", "rescale_factor",
                         "do_normalize", "do_convert_rgb")
NOT_QUANTIZED = ("model.vision_tower", "model.multi_modal_projector", "lm_head")


def format_prompt(prompt: str) -> str:
    """The LLaVA-1.5 user turn, ending where the assistant's answer begins."""
    return f"USER: <image>\n{prompt} ASSISTANT:"


def format_answer(caption: str) -> str:
    """The assistant's answer text after `format_prompt` (the caller appends the EOS id)."""
    return f" {caption}"


def load_processor(id_or_dir: str, image_size: int, pad_to_square: bool = False, *,
                   revision: str | None = None) -> ProcessorMixin:
    """The checkpoint's processor (at `revision` of a hub id, None = main), resizing and
    centre-cropping images to `image_size`.

    With `pad_to_square` images are first padded to a square with the mean colour, as
    LLaVA-1.5 was trained (its `expand2square`), so the crop cuts nothing away. The setting
    is saved with the processor, so evaluation of an adapter repeats it. The processor
    expands `<image>` into one token per patch of the pixels it produces, so the token
    count follows `image_size` (see `image_token_count`).
    """
    processor = load_pretrained(AutoProcessor.from_pretrained, id_or_dir, revision=revision)
    patch_size = processor.patch_size
    if image_size <= 0 or image_size % patch_size:
        raise ValueError(
            f"image_size {image_size} must be a positive multiple of the "
            f"patch size {patch_size} of {id_or_dir}"
        )
    processor.image_processor.size = SizeDict(shortest_edge=image_size)
    processor.image_processor.crop_size = SizeDict(height=image_size, width=image_size)
    if pad_to_square:
        settings = {key: value for key, value in processor.image_processor.to_dict().items()
                    if key in PADDED_PROCESSOR_KEYS}
        processor.image_processor = LlavaImageProcessorPil(**settings, do_pad=True)
    return processor


def special_token_texts(processor: ProcessorMixin) -> tuple[str, ...]:
    """Texts the tokenizer turns into a special token wherever they occur, so none may appear
    in a prompt or caption: a stray `<image>` gets image features the image does not have,
    an `</s>` or `<pad>` would end a caption early or train on padding."""
    return tuple(sorted({processor.image_token, *processor.tokenizer.all_special_tokens}))


def processor_image_size(processor: ProcessorMixin) -> int:
    """The square side images are cropped to (what `load_processor` set)."""
    crop = processor.image_processor.crop_size
    if crop["height"] != crop["width"]:
        raise ValueError(f"expected a square crop size, got {crop['height']}x{crop['width']}")
    return int(crop["height"])


def image_token_count(processor: ProcessorMixin) -> int:
    """How many `<image>` tokens the processor expands one image into, asked of the processor:
    (image_size / patch)^2 + num_additional_image_tokens - 1 with strategy "default"."""
    size = processor_image_size(processor)
    encoded = processor(text=processor.image_token, images=Image.new("RGB", (size, size)))
    return sum(token == processor.image_token_id for token in encoded["input_ids"][0])


def quantization_config() -> BitsAndBytesConfig:
    """QLoRA: nf4 base weights with double quantisation, bf16 compute; vision and projector
    stay unquantised."""
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
        llm_int8_skip_modules=list(NOT_QUANTIZED),
    )


def check_4bit_support() -> None:
    """RuntimeError saying what to do when bitsandbytes cannot quantise to nf4 here."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "load_in_4bit needs bitsandbytes: `pip install bitsandbytes`, "
            "or set train.load_in_4bit=false"
        )
    try:
        import bitsandbytes.functional as bnb_functional

        probe = torch.randn(64, 64, dtype=torch.bfloat16, device=resolve_device())
        bnb_functional.quantize_4bit(probe, quant_type="nf4")
    except (RuntimeError, NotImplementedError, OSError, ImportError) as error:
        raise RuntimeError(
            f"bitsandbytes cannot quantise to 4 bit on this machine ({error}); "
            "run on a CUDA GPU with a CUDA build of bitsandbytes, or set train.load_in_4bit=false"
        ) from error


def resize_vision_positions(model: LlavaForConditionalGeneration, image_size: int) -> bool:
    """Resize the CLIP tower's position-embedding table to `image_size` in place.

    The new table is CLIP's own bicubic `interpolate_pos_encoding` evaluated once, so a plain
    forward at the new size equals `interpolate_pos_encoding=True` at the old one, and every
    later call (training, generation) needs no extra argument. Returns whether it resized.
    """
    embeddings = model.model.vision_tower.embeddings
    if image_size == embeddings.image_size:
        return False
    if image_size % embeddings.patch_size:
        raise ValueError(
            f"image_size {image_size} is not a multiple of the vision patch size "
            f"{embeddings.patch_size}"
        )
    old = embeddings.position_embedding.weight
    num_patches = (image_size // embeddings.patch_size) ** 2
    with torch.no_grad():
        probe = old.new_zeros(1, num_patches + 1, old.shape[1])
        table = embeddings.interpolate_pos_encoding(probe, image_size, image_size)[0]
    resized = torch.nn.Embedding(num_patches + 1, old.shape[1], device=old.device, dtype=old.dtype)
    resized.weight.data.copy_(table)
    resized.weight.requires_grad_(old.requires_grad)
    logger.info(
        "resized vision position embeddings %d -> %d positions (image %d -> %d px)",
        old.shape[0],
        num_patches + 1,
        embeddings.image_size,
        image_size,
    )
    embeddings.position_embedding = resized
    embeddings.image_size = image_size
    embeddings.num_patches = num_patches
    embeddings.num_positions = num_patches + 1
    embeddings.position_ids = torch.arange(num_patches + 1, device=old.device).expand((1, -1))
    model.config.vision_config.image_size = image_size
    model.config.image_seq_length = num_patches
    return True


def load_llava(
    id_or_dir: str,
    image_size: int,
    *,
    dtype: torch.dtype,
    load_in_4bit: bool = False,
    device_map: str | dict | None = None,
    revision: str | None = None,
) -> LlavaForConditionalGeneration:
    """LLaVA from a hub id (at `revision`, None = main) or local directory, its vision tower
    set to `image_size`.

    `load_in_4bit` loads the language model in nf4 (QLoRA); on a CPU-only machine pass
    `device_map="cpu"`. `dtype` is the dtype of the unquantised weights.
    """
    kwargs: dict[str, object] = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    if load_in_4bit:
        check_4bit_support()
        kwargs["quantization_config"] = quantization_config()
    model = load_pretrained(LlavaForConditionalGeneration.from_pretrained, id_or_dir,
                            revision=revision, **kwargs)
    resize_vision_positions(model, image_size)
    return model
