"""Caption generation with the tiny LLaVA: only new tokens, left padding, skips, worker path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from library_helpers import caption_images
from PIL import Image

from src.data.images import ImageDataset
from src.eval.generate import CaptionSettings, caption_shards
from src.models.llava import format_prompt, load_llava, load_processor

PROMPTS = (
    "Provide a one-sentence caption for the provided image.",
    "Describe the region in one short phrase.",
    "Describe the highlighted region",
)
COLORS = ((220, 30, 30), (30, 170, 50), (30, 70, 220), (240, 220, 30))


@pytest.fixture(scope="module")
def llava(tiny_models: dict[str, Path]) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    model_dir = str(tiny_models["llava"])
    return load_llava(model_dir, 32, dtype=torch.float32).eval(), load_processor(model_dir, 32)


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (48 + 8 * i, 40), color) for i, color in enumerate(COLORS)]


def test_decodes_only_the_new_tokens(llava: tuple) -> None:
    model, processor = llava
    image = _images()[0]
    [caption] = caption_images(model, processor, [image], [PROMPTS[0]],
                               CaptionSettings(PROMPTS[0], max_new_tokens=5))

    inputs = processor(images=[image], text=[format_prompt(PROMPTS[0])], return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    prompt_len = inputs["input_ids"].shape[1]
    assert output.shape[1] > prompt_len
    assert caption == processor.decode(output[0, prompt_len:], skip_special_tokens=True).strip()
    assert caption != processor.decode(output[0], skip_special_tokens=True).strip()
    # The prompt alone is 14 words; the caption is at most the 5 new tokens.
    assert 0 < len(processor.tokenizer(caption, add_special_tokens=False)["input_ids"]) <= 5


def test_left_padded_batch_equals_batch_size_one(llava: tuple) -> None:
    model, processor = llava
    settings = CaptionSettings(PROMPTS[0], max_new_tokens=8)
    images = _images()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(images))]
    batched = caption_images(model, processor, images, prompts, settings)
    one_by_one = [caption_images(model, processor, [image], [prompt], settings)[0]
                  for image, prompt in zip(images, prompts, strict=True)]
    assert batched == one_by_one
    assert len(set(batched)) > 1  # the images really give different captions

    inputs = processor(images=images, text=[format_prompt(p) for p in prompts], padding=True,
                       padding_side="left", return_tensors="pt")
    assert (inputs["attention_mask"][:, 0] == 0).any()  # the comparison did involve padding
    assert (inputs["attention_mask"][:, -1] == 1).all()


def test_caption_shards_yield_captions_and_skips_per_shard(llava: tuple, tmp_path: Path) -> None:
    model, processor = llava
    settings = CaptionSettings(PROMPTS[0], max_new_tokens=6)
    for index, image in enumerate(_images()):
        image.save(tmp_path / f"{index}.png")
    (tmp_path / "corrupt.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    images = ImageDataset([*((i, f"{i}.png") for i in range(4)), (10, "missing.jpg"),
                           (11, "corrupt.jpg"), (12, "../0.png")], tmp_path)

    shards = list(caption_shards(model, processor, images, [[0, 4, 1], [5, 2, 3, 6]], settings,
                                 batch_size=2, num_workers=1, progress=False))

    expected = caption_images(model, processor, _images(), [PROMPTS[0]] * 4, settings)
    assert [shard for shard, _, _ in shards] == [[0, 4, 1], [5, 2, 3, 6]]
    assert [frame.to_dict("list") for _, frame, _ in shards] == [
        {"image_id": [0, 1], "caption": [expected[0], expected[1]]},
        {"image_id": [2, 3], "caption": [expected[2], expected[3]]}]
    assert [skips.as_dict() for _, _, skips in shards] == [
        {"missing": [10]}, {"not_an_image": [11], "path_escape": [12]}]
