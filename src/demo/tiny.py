"""Random-weight Hugging Face checkpoints of the pipeline's three models, built offline.

The demo profile and the tests need GroundingDINO, CLIP and LLaVA-1.5 checkpoints that
load with the very code the pipeline uses for hub ids, on a machine without the hub.
`--size tiny` writes CPU-fast models; `--size real` writes the published architectures
(configs kept under `src/models/configs/`) for GPU throughput benchmarks. Tokenizers are
hand-written word-level vocabularies (one token per demo word), and a rebuild gives
byte-identical files, so DVC can cache the checkpoints.

    python -m src.demo.tiny --out models/tiny --size tiny --seed 0
    python -m src.demo.tiny --out models/real --size real --device cuda  # GPU benchmarks
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForZeroShotObjectDetection,
    BertConfig,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPVisionConfig,
    GroundingDinoConfig,
    GroundingDinoImageProcessorPil,
    GroundingDinoProcessor,
    LlamaConfig,
    LlavaConfig,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    SwinConfig,
)
from transformers.image_processing_utils import BaseImageProcessor

from src.demo.synthetic_coco import caption_words

logger = logging.getLogger(__name__)

MODEL_NAMES = ("grounding-dino", "clip", "llava")
# Published configs of IDEA-Research/grounding-dino-tiny, openai/clip-vit-base-patch32 and
# llava-hf/llava-1.5-7b-hf (config.json + preprocessor_config.json).
REAL_CONFIG_DIRS = {
    name: Path(__file__).parents[1] / "models" / "configs" / dirname
    for name, dirname in zip(
        MODEL_NAMES,
        ("grounding-dino-tiny", "clip-vit-base-patch32", "llava-1.5-7b-hf"),
        strict=True,
    )
}
MAX_SHARD_SIZE = "5GB"
# The Auto classes the pipeline loads each checkpoint with.
AUTO_MODEL_CLASSES = {
    GroundingDinoConfig: AutoModelForZeroShotObjectDetection,
    CLIPConfig: AutoModel,
    LlavaConfig: AutoModelForImageTextToText,
}

# Vocabulary: every word the demo captions and the pipeline's prompts use.
PROMPTS = (
    "Provide a one-sentence caption for the provided image.",
    "Describe the region in one short phrase.",
    "Describe the highlighted region",
)
EXTRA_WORDS = ("user", "assistant", "photo", "depicts")
PUNCTUATION = ".,:?!-'[]"
DIGITS = "0123456789"

# BERT: bert-base-uncased's special ids, and its block of ASCII punctuation and digits
# from id 999 ('!'). GroundingDINO hard-codes [CLS] 101, [SEP] 102, '.' 1012 and '?' 1029
# as phrase delimiters, so they must sit exactly there.
BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
BERT_FIRST_WORD_ID = 104
BERT_ASCII_BLOCK = "!\"#$%&'()*+,-./0123456789:;<=>?@[\\]^_`"
BERT_ASCII_FIRST_ID = 999
# CLIP: unknown, start and end of text take the last three ids (openai: 49406, 49407).
CLIP_SPECIAL_TOKENS = ("<unk>", "<|startoftext|>", "<|endoftext|>")
CLIP_MAX_LENGTH = 77
# Llama: <unk> 0, <s> 1, </s> 2; <image> and <pad> where the LLaVA config puts them.
LLAMA_SPECIAL_IDS = {"<unk>": 0, "<s>": 1, "</s>": 2}
IMAGE_TOKEN = "<image>"
LLAMA_PAD_TOKEN = "<pad>"


def _normalizer() -> normalizers.Normalizer:
    return normalizers.BertNormalizer(lowercase=True)


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split on whitespace, and off every punctuation character and digit."""
    return pre_tokenizers.Sequence(
        [pre_tokenizers.BertPreTokenizer(), pre_tokenizers.Digits(individual_digits=True)]
    )


def split_words(text: str) -> list[str]:
    """Split `text` exactly as the tiny tokenizers do, before the vocabulary lookup."""
    normalized = _normalizer().normalize_str(text)
    return [piece for piece, _ in _pre_tokenizer().pre_tokenize_str(normalized)]


def vocabulary_words() -> tuple[str, ...]:
    """The words every tokenizer knows, one token each, in id order: the single source."""
    words = [
        *caption_words(),
        *(word for prompt in PROMPTS for word in split_words(prompt)),
        *EXTRA_WORDS,
        *PUNCTUATION,
        *DIGITS,
    ]
    return tuple(dict.fromkeys(words))


def _token_layout(
    pinned_ids: dict[str, int], first_word_id: int, vocab_size: int, placeholder: str
) -> list[str]:
    """Tokens by id: `pinned_ids` where given, the other words from `first_word_id` on, and
    `placeholder.format(id)` in the gaps, so ids match the published vocabularies."""
    tokens: list[str | None] = [None] * vocab_size
    for token, token_id in pinned_ids.items():
        tokens[token_id] = token
    free_ids = [i for i in range(first_word_id, vocab_size) if tokens[i] is None]
    words = [word for word in vocabulary_words() if word not in pinned_ids]
    if len(words) > len(free_ids):
        raise ValueError(
            f"vocab_size {vocab_size} leaves {len(free_ids)} ids for {len(words)} words"
        )
    for token_id, word in zip(free_ids, words, strict=False):
        tokens[token_id] = word
    return [placeholder.format(i) if token is None else token for i, token in enumerate(tokens)]


def _word_level_tokenizer(
    tokens: list[str], unk_token: str, template: str, pair_template: str, **special_tokens: object
) -> PreTrainedTokenizerFast:
    """Wrap a fixed vocabulary (no training: deterministic) as a fast tokenizer with offsets."""
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    template_tokens = {part.split(":")[0] for part in f"{template} {pair_template}".split()}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=unk_token))
    tokenizer.normalizer = _normalizer()
    tokenizer.pre_tokenizer = _pre_tokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single=template,
        pair=pair_template,
        special_tokens=[
            (token, vocab[token]) for token in sorted(template_tokens) if token in vocab
        ],
    )
    # Joins words with spaces and re-attaches punctuation: "a red circle."
    tokenizer.decoder = decoders.WordPiece(cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token=unk_token, **special_tokens
    )


def _bert_pinned_ids() -> dict[str, int]:
    ascii_ids = {char: BERT_ASCII_FIRST_ID + i for i, char in enumerate(BERT_ASCII_BLOCK)}
    words = set(vocabulary_words())
    return BERT_SPECIAL_IDS | {char: i for char, i in ascii_ids.items() if char in words}


def bert_tiny_vocab_size() -> int:
    return max(_bert_pinned_ids().values()) + 1


def bert_tokenizer(vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """bert-base-uncased layout (GroundingDINO's text encoder): [CLS] text [SEP]."""
    tokens = _token_layout(_bert_pinned_ids(), BERT_FIRST_WORD_ID, vocab_size, "[unused{}]")
    return _word_level_tokenizer(
        tokens,
        unk_token="[UNK]",
        template="[CLS] $A [SEP]",
        pair_template="[CLS] $A [SEP] $B:1 [SEP]:1",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
    )


def clip_tiny_vocab_size() -> int:
    return len(vocabulary_words()) + len(CLIP_SPECIAL_TOKENS)


def clip_tokenizer(vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """openai CLIP layout: words first, start/end of text last; pads with end of text."""
    unk, bos, eos = CLIP_SPECIAL_TOKENS
    pinned_ids = {token: vocab_size - 3 + i for i, token in enumerate(CLIP_SPECIAL_TOKENS)}
    tokens = _token_layout(pinned_ids, 0, vocab_size, "<|unused{}|>")
    return _word_level_tokenizer(
        tokens,
        unk_token=unk,
        template=f"{bos} $A {eos}",
        pair_template=f"{bos} $A {eos} $B:1 {eos}:1",
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        model_max_length=model_max_length,
    )


def llama_tokenizer(
    vocab_size: int, image_token_id: int, pad_token_id: int, model_max_length: int
) -> PreTrainedTokenizerFast:
    """Llama/Vicuna layout: adds <s> in front and never </s> (the caller ends labels);
    `tokenizer.image_token` / `image_token_id` name the image placeholder."""
    pinned_ids = LLAMA_SPECIAL_IDS | {IMAGE_TOKEN: image_token_id, LLAMA_PAD_TOKEN: pad_token_id}
    tokens = _token_layout(pinned_ids, len(LLAMA_SPECIAL_IDS), vocab_size, "<unused{}>")
    return _word_level_tokenizer(
        tokens,
        unk_token="<unk>",
        template="<s> $A",
        pair_template="<s> $A $B:1",
        bos_token="<s>",
        eos_token="</s>",
        pad_token=LLAMA_PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=model_max_length,
    )


def tiny_grounding_dino_config() -> GroundingDinoConfig:
    """A few-layer GroundingDINO with a 4-stage Swin of 16..128 channels."""
    return GroundingDinoConfig(
        architectures=["GroundingDinoForObjectDetection"],
        backbone_config=SwinConfig(
            embed_dim=16,
            depths=[1, 1, 1, 1],
            num_heads=[1, 1, 2, 2],
            window_size=4,
            out_indices=[2, 3, 4],
        ),
        text_config=BertConfig(
            vocab_size=bert_tiny_vocab_size(),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=256,
        ),
        d_model=32,
        encoder_layers=1,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_layers=2,  # 1 fails to tie the shared box heads
        decoder_attention_heads=2,
        decoder_ffn_dim=64,
        num_queries=30,
    )


def tiny_vision_config() -> CLIPVisionConfig:
    """The vision tower of both the tiny CLIP and the tiny LLaVA: one config, so the demo's
    LLaVA sees through the trained CLIP's image encoder (src/demo/weights.py)."""
    return CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    )


def tiny_clip_config() -> CLIPConfig:
    """Two-layer towers on 32-px images; the text tower pools at the tokenizer's eos."""
    vocab_size = clip_tiny_vocab_size()
    return CLIPConfig(
        architectures=["CLIPModel"],
        text_config=CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
        ),
        vision_config=tiny_vision_config(),
        projection_dim=32,
    )


def tiny_llava_config() -> LlavaConfig:
    """The setup that learned templated captions on a CPU (STACK-NOTES): 16 image tokens
    from a 2-layer CLIP tower's last layer, a 2-layer 128-wide Llama."""
    image_token_id = len(LLAMA_SPECIAL_IDS) + len(vocabulary_words())
    pad_token_id = image_token_id + 1
    vision_config = tiny_vision_config()
    return LlavaConfig(
        architectures=["LlavaForConditionalGeneration"],
        vision_config=vision_config,
        text_config=LlamaConfig(
            vocab_size=pad_token_id + 1,
            hidden_size=128,  # >= 64 so bitsandbytes can quantise its Linear layers
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            bos_token_id=LLAMA_SPECIAL_IDS["<s>"],
            eos_token_id=LLAMA_SPECIAL_IDS["</s>"],
            pad_token_id=pad_token_id,
        ),
        image_token_index=image_token_id,
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
        pad_token_id=pad_token_id,
        vision_feature_layer=-1,  # the default -2 would leave the last of 2 layers unused
        vision_feature_select_strategy="default",
    )


def _clip_image_processor(image_size: int) -> CLIPImageProcessorPil:
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


def build_processor(
    config: PreTrainedConfig, image_processor: BaseImageProcessor
) -> ProcessorMixin:
    """A processor whose tokenizer ids and image-token count match `config`; every tokenizer
    stops at the text tower's positions."""
    if isinstance(config, GroundingDinoConfig):
        text_config = config.text_config
        tokenizer = bert_tokenizer(text_config.vocab_size, text_config.max_position_embeddings)
        return GroundingDinoProcessor(image_processor, tokenizer)
    if isinstance(config, CLIPConfig):
        text_config = config.text_config
        tokenizer = clip_tokenizer(text_config.vocab_size, text_config.max_position_embeddings)
        return CLIPProcessor(image_processor, tokenizer)
    if isinstance(config, LlavaConfig):
        tokenizer = llama_tokenizer(
            config.text_config.vocab_size,
            config.image_token_id,
            config.pad_token_id,
            config.text_config.max_position_embeddings,
        )
        return LlavaProcessor(
            image_processor,
            tokenizer,
            patch_size=config.vision_config.patch_size,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            num_additional_image_tokens=1,  # CLIP's class token, dropped by "default"
        )
    raise TypeError(f"no processor recipe for {type(config).__name__}")


def build_checkpoint(
    out_dir: Path,
    config: PreTrainedConfig,
    image_processor: BaseImageProcessor,
    seed: int,
    device: str = "cpu",
    init: Callable[[PreTrainedModel], None] | None = None,
) -> Path:
    """Write model + processor with seeded random weights to `out_dir`, replacing it whole.

    `init(model)`, when given, then sets (some of) the weights: the demo's trained ones.

    Weights are created directly in the config's dtype (float16 for LLaVA-7B: ~15 GB) on
    `device`; the bytes depend on the device's random generator, so DVC-cached builds stay on
    the CPU, while "cuda" initialises a 7B model in seconds rather than minutes.
    """
    processor = build_processor(config, image_processor)
    torch.manual_seed(seed)
    auto_class = AUTO_MODEL_CLASSES[type(config)]
    with torch.device(device):
        model = auto_class.from_config(config, dtype=config.dtype or torch.float32)
    if init is not None:
        init(model)
    partial_dir = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(partial_dir, ignore_errors=True)
    model.save_pretrained(partial_dir, max_shard_size=MAX_SHARD_SIZE)
    processor.save_pretrained(partial_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    partial_dir.rename(out_dir)
    return out_dir


def _tiny_spec(name: str) -> tuple[PreTrainedConfig, BaseImageProcessor]:
    if name == "grounding-dino":
        # Small images keep a CPU forward around 15 ms.
        image_processor = GroundingDinoImageProcessorPil(
            size={"shortest_edge": 128, "longest_edge": 192}
        )
        return tiny_grounding_dino_config(), image_processor
    if name == "clip":
        config = tiny_clip_config()
    elif name == "llava":
        config = tiny_llava_config()
    else:
        raise ValueError(f"unknown model {name!r}: expected one of {MODEL_NAMES}")
    return config, _clip_image_processor(config.vision_config.image_size)


def real_config(name: str) -> PreTrainedConfig:
    """The published config of model `name` (one of MODEL_NAMES)."""
    return AutoConfig.from_pretrained(REAL_CONFIG_DIRS[name])


def _real_spec(name: str) -> tuple[PreTrainedConfig, BaseImageProcessor]:
    image_processor = AutoImageProcessor.from_pretrained(REAL_CONFIG_DIRS[name], backend="pil")
    return real_config(name), image_processor


def build_tiny_models(
    out_dir: Path,
    seed: int = 0,
    names: Iterable[str] = MODEL_NAMES,
    inits: Mapping[str, Callable[[PreTrainedModel], None]] | None = None,
) -> dict[str, Path]:
    """CPU-fast checkpoints for the demo profile and the tests: `out_dir/<name>`; `inits`
    (by model name) load trained weights into the random ones (src/demo/weights.py)."""
    inits = inits or {}
    return {
        name: build_checkpoint(out_dir / name, *_tiny_spec(name), seed, init=inits.get(name))
        for name in names
    }


def build_real_models(
    out_dir: Path, seed: int = 0, names: Iterable[str] = MODEL_NAMES, device: str = "cpu"
) -> dict[str, Path]:
    """Published architectures with random weights, for GPU benchmarks (LLaVA: 7B, ~14 GB)."""
    return {
        name: build_checkpoint(out_dir / name, *_real_spec(name), seed, device) for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="one sub-directory per model")
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", choices=MODEL_NAMES, default=list(MODEL_NAMES))
    parser.add_argument(
        "--device",
        default="cpu",
        help="where --size real draws its weights: cuda takes seconds for LLaVA-7B, the CPU "
        "minutes (tiny models are always drawn on the CPU: their bytes are cached)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    start = time.perf_counter()
    if args.size == "tiny":
        paths = build_tiny_models(args.out, args.seed, args.models)
    else:
        paths = build_real_models(args.out, args.seed, args.models, args.device)
    logger.info(
        "wrote %d %s checkpoints (%s) to %s in %.1f s",
        len(paths),
        args.size,
        ", ".join(paths),
        args.out,
        time.perf_counter() - start,
    )


if __name__ == "__main__":
    main()
