"""The tiny-model factory: checkpoints load through the pipeline's loaders, run, keep the
token ids the models hard-code, and rebuild byte for byte (DVC caches them by hash)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageTextToText,
    AutoModelForZeroShotObjectDetection,
    AutoProcessor,
    CLIPModel,
    GroundingDinoForObjectDetection,
)

from src.demo.synthetic_coco import caption_words
from src.demo.tiny import (
    MODEL_NAMES,
    PROMPTS,
    REAL_CONFIG_DIRS,
    build_processor,
    build_real_models,
    build_tiny_models,
    llama_tokenizer,
    real_config,
    split_words,
    vocabulary_words,
)
from src.models.hub import load_pretrained
from src.models.llava import quantization_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CAPTION_PROMPT = "USER: <image>\nProvide a one-sentence caption for the provided image. ASSISTANT:"
CHECKPOINT_FILES = {
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("tiny")
    build_tiny_models(out_dir, seed=0)
    return out_dir


@pytest.fixture(scope="module")
def image() -> Image.Image:
    picture = Image.new("RGB", (320, 240), (245, 245, 245))
    picture.paste((220, 30, 30), (40, 60, 140, 160))
    return picture


def _file_bytes(directory: Path) -> dict[str, bytes]:
    return {
        path.relative_to(directory).as_posix(): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def test_every_checkpoint_is_complete(tiny_dir: Path) -> None:
    for name in MODEL_NAMES:
        assert {path.name for path in (tiny_dir / name).iterdir()} >= CHECKPOINT_FILES, name


def test_rebuild_in_another_process_is_byte_identical(tiny_dir: Path, tmp_path: Path) -> None:
    # Another process and hash seed: set ordering or timestamps in any file would show.
    subprocess.run(
        [sys.executable, "-m", "src.demo.tiny", "--out", str(tmp_path), "--seed", "0"],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONHASHSEED": "1"},
        check=True,
        capture_output=True,
    )
    expected, rebuilt = _file_bytes(tiny_dir), _file_bytes(tmp_path)
    assert sorted(rebuilt) == sorted(expected)
    assert [name for name in expected if rebuilt[name] != expected[name]] == []


def test_seed_changes_the_weights_only(tiny_dir: Path, tmp_path: Path) -> None:
    build_tiny_models(tmp_path, seed=1, names=["clip"])
    expected, rebuilt = _file_bytes(tiny_dir / "clip"), _file_bytes(tmp_path / "clip")
    assert [name for name in expected if rebuilt[name] != expected[name]] == ["model.safetensors"]


def test_vocabulary_covers_captions_and_prompts_once() -> None:
    words = vocabulary_words()
    assert len(words) == len(set(words))
    assert set(caption_words()) <= set(words)
    assert {word for prompt in PROMPTS for word in split_words(prompt)} <= set(words)
    assert {"user", "assistant", "photo", "depicts", "0", "9", "[", "]"} <= set(words)
    assert split_words("USER: one-sentence, 12") == [
        "user",
        ":",
        "one",
        "-",
        "sentence",
        ",",
        "1",
        "2",
    ]


def test_grounding_dino_tokenizer_keeps_bert_ids_and_offsets(tiny_dir: Path) -> None:
    tokenizer = load_pretrained(
        AutoProcessor.from_pretrained, tiny_dir / "grounding-dino"
    ).tokenizer
    ids = tokenizer.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", "?"])
    assert ids == [0, 100, 101, 102, 1012, 1029]

    text = "A red circle. a Zebra?"
    encoding = tokenizer(text, return_offsets_mapping=True)
    assert encoding.input_ids[0] == 101 and encoding.input_ids[-1] == 102
    assert encoding.input_ids[4] == 1012 and encoding.input_ids[7:9] == [1029, 102]
    assert encoding.input_ids[6] == tokenizer.unk_token_id  # "zebra" is no demo word
    spans = [text[start:end] for start, end in encoding.offset_mapping[1:-1]]
    assert spans == ["A", "red", "circle", ".", "a", "Zebra", "?"]


def test_grounding_dino_detects_and_post_processes(tiny_dir: Path, image: Image.Image) -> None:
    processor = load_pretrained(AutoProcessor.from_pretrained, tiny_dir / "grounding-dino")
    model = load_pretrained(
        AutoModelForZeroShotObjectDetection.from_pretrained, tiny_dir / "grounding-dino"
    )
    assert isinstance(model, GroundingDinoForObjectDetection)
    assert type(processor.image_processor).__name__.endswith("Pil")
    inputs = processor(images=[image], text=["a red square. a blue circle."], return_tensors="pt")
    assert max(inputs.pixel_values.shape[-2:]) <= 192
    with torch.no_grad():
        outputs = model(**inputs)
    (result,) = processor.post_process_grounded_object_detection(
        outputs,
        input_ids=inputs.input_ids,
        threshold=0.0,
        text_threshold=0.0,
        target_sizes=[(image.height, image.width)],
    )
    assert result["boxes"].shape == (model.config.num_queries, 4)
    assert len(result["scores"]) == len(result["text_labels"]) == model.config.num_queries


def test_clip_truncates_pools_at_eos_and_embeds(tiny_dir: Path, image: Image.Image) -> None:
    processor = load_pretrained(AutoProcessor.from_pretrained, tiny_dir / "clip")
    model = load_pretrained(CLIPModel.from_pretrained, tiny_dir / "clip")
    tokenizer, text_config = processor.tokenizer, model.config.text_config
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (
        text_config.bos_token_id,
        text_config.eos_token_id,
        text_config.pad_token_id,
    )
    texts = ["a photo depicts " + "a red square and " * 40, "a photo depicts a red square."]
    inputs = processor(
        text=texts, images=[image, image], return_tensors="pt", padding=True, truncation=True
    )
    assert inputs.input_ids.shape[1] == text_config.max_position_embeddings == 77
    assert inputs.input_ids[0, -1] == tokenizer.eos_token_id
    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values=inputs.pixel_values).pooler_output
        text_embeds = model.get_text_features(
            input_ids=inputs.input_ids, attention_mask=inputs.attention_mask
        ).pooler_output
    assert image_embeds.shape == text_embeds.shape == (2, model.config.projection_dim)


def test_llava_prompt_has_bos_16_image_tokens_and_no_eos(
    tiny_dir: Path, image: Image.Image
) -> None:
    processor = load_pretrained(AutoProcessor.from_pretrained, tiny_dir / "llava")
    config = load_pretrained(AutoConfig.from_pretrained, tiny_dir / "llava")
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>"]) == [0, 1, 2]
    assert config.image_token_id == tokenizer.image_token_id == processor.image_token_id
    assert config.pad_token_id == tokenizer.pad_token_id
    input_ids = processor(images=[image], text=[CAPTION_PROMPT], return_tensors="pt").input_ids[0]
    assert (input_ids == config.image_token_id).sum() == config.image_seq_length == 16
    assert input_ids[0] == tokenizer.bos_token_id
    assert tokenizer.eos_token_id not in input_ids.tolist()
    assert tokenizer.unk_token_id not in input_ids.tolist()


def test_llava_trains_and_generates(tiny_dir: Path, image: Image.Image) -> None:
    processor = load_pretrained(AutoProcessor.from_pretrained, tiny_dir / "llava")
    model = load_pretrained(AutoModelForImageTextToText.from_pretrained, tiny_dir / "llava")
    inputs = processor(
        images=[image], text=[CAPTION_PROMPT + " a red square."], return_tensors="pt"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        loss = model(**inputs, labels=inputs.input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]

    prompt = processor(images=[image], text=[CAPTION_PROMPT], return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] <= prompt.input_ids.shape[1] + 4


def test_llava_loads_in_4bit_with_vision_and_head_skipped(
    tiny_dir: Path, image: Image.Image
) -> None:
    """Through the project's own QLoRA config (`src.models.llava.quantization_config`)."""
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    config = quantization_config()
    assert (config.bnb_4bit_quant_type, config.bnb_4bit_use_double_quant) == ("nf4", True)
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    model = load_pretrained(
        AutoModelForImageTextToText.from_pretrained,
        tiny_dir / "llava",
        quantization_config=config,
        device_map="cpu",
    )
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 14  # 7 projections x 2 Llama layers: the whole language model
    assert {m.weight.quant_type for m in quantized} == {"nf4"}
    assert isinstance(model.model.language_model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    vision_linears = [
        m for m in model.model.vision_tower.modules() if isinstance(m, torch.nn.Linear)
    ]
    assert vision_linears and not any(isinstance(m, bnb.nn.Linear4bit) for m in vision_linears)
    assert not isinstance(model.lm_head, bnb.nn.Linear4bit)
    processor = load_pretrained(AutoProcessor.from_pretrained, tiny_dir / "llava")
    inputs = processor(images=[image], text=[CAPTION_PROMPT], return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_real_configs_have_the_published_numbers() -> None:
    grounding_dino, clip, llava = (real_config(name) for name in MODEL_NAMES)
    assert (grounding_dino.d_model, grounding_dino.num_queries) == (256, 900)
    assert grounding_dino.backbone_config.embed_dim == 96
    assert list(grounding_dino.backbone_config.depths) == [2, 2, 6, 2]
    assert grounding_dino.text_config.vocab_size == 30522
    assert (clip.projection_dim, clip.vision_config.patch_size) == (512, 32)
    assert clip.text_config.vocab_size == 49408
    text = llava.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (4096, 32, 32064)
    assert (llava.image_token_id, llava.pad_token_id) == (32000, 32001)
    assert (llava.vision_config.image_size // llava.vision_config.patch_size) ** 2 == 576
    assert llava.image_seq_length == 576


def test_real_llava_processor_expands_576_image_tokens(image: Image.Image) -> None:
    image_processor = AutoImageProcessor.from_pretrained(REAL_CONFIG_DIRS["llava"], backend="pil")
    processor = build_processor(real_config("llava"), image_processor)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 32064
    assert tokenizer.convert_tokens_to_ids(["<unk>", "<s>", "</s>", "<image>", "<pad>"]) == [
        0,
        1,
        2,
        32000,
        32001,
    ]
    input_ids = processor(images=[image], text=[CAPTION_PROMPT], return_tensors="pt").input_ids
    assert (input_ids == 32000).sum() == 576


def test_a_vocab_size_too_small_for_the_words_is_an_error() -> None:
    with pytest.raises(ValueError, match="leaves"):
        llama_tokenizer(10, 8, 9, 64)


def test_real_grounding_dino_and_clip_build_and_load(tmp_path: Path, image: Image.Image) -> None:
    paths = build_real_models(tmp_path, seed=0, names=["grounding-dino", "clip"])
    grounding_dino = AutoModelForZeroShotObjectDetection.from_pretrained(paths["grounding-dino"])
    assert sum(p.numel() for p in grounding_dino.parameters()) == 172_250_626
    processor = AutoProcessor.from_pretrained(paths["grounding-dino"])
    assert processor.tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"]) == [
        101,
        102,
        1012,
        1029,
    ]
    clip = CLIPModel.from_pretrained(paths["clip"])
    assert sum(p.numel() for p in clip.parameters()) == 151_277_313
    processor = AutoProcessor.from_pretrained(paths["clip"])
    assert (processor.tokenizer.bos_token_id, processor.tokenizer.eos_token_id) == (49406, 49407)
    inputs = processor(text=["a photo depicts a red square."], images=[image], return_tensors="pt")
    with torch.no_grad():
        assert clip(**inputs).logits_per_image.shape == (1, 1)


def test_hub_id_that_cannot_be_fetched_says_what_to_do() -> None:
    with pytest.raises(OSError, match=r"not a local directory.*make demo"):
        load_pretrained(
            AutoConfig.from_pretrained, "IDEA-Research/grounding-dino-tiny", local_files_only=True
        )
