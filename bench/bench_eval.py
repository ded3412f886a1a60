"""Evaluation throughput: caption generation images/s and metric time for a COCO-size split.

    python bench/bench_eval.py                       # tiny LLaVA on CPU + metrics for 5000 images
    python bench/bench_eval.py --parts real          # random-weight LLaVA-1.5-7B + CLIP on cuda

Generation runs at a fixed length (min_new_tokens = max_new_tokens) so that an untrained
model, which may stop at once or never, costs what a trained one does. `cpu-tiny` feeds
the tiny checkpoint real processor inputs; `real` builds the published LLaVA-1.5-7B
architecture (random weights, no download) and feeds it prompts of the real length (576
image tokens). `metrics` times the pycocoevalcap scorer on 5000 synthetic images x 5 refs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import median_seconds
from src.demo.synthetic_coco import caption_words
from src.demo.tiny import build_tiny_models, real_config
from src.eval.generate import CaptionSettings, build_inputs

PROMPT = "Provide a one-sentence caption for the provided image."
PROMPT_TEXT_TOKENS = 24  # ~ the LLaVA tokens of format_prompt(PROMPT) besides <image>


def _generation_rows(model: torch.nn.Module, make_inputs: Callable[[int], dict],
                     batch_sizes: list[int], settings: CaptionSettings, device: torch.device,
                     repeats: int, label: str) -> list[dict]:
    rows = []
    for batch_size in batch_sizes:
        inputs = make_inputs(batch_size)
        kwargs = settings.generate_kwargs()

        def run(inputs: dict = inputs, kwargs: dict = kwargs) -> None:
            with torch.inference_mode():
                model.generate(**inputs, **kwargs)

        seconds = median_seconds(run, device, repeats)
        rows.append({"part": label, "batch_size": batch_size,
                     "images_per_s": round(batch_size / seconds, 2),
                     "new_tokens_per_s": round(batch_size * settings.max_new_tokens / seconds, 1),
                     "s_per_batch": round(seconds, 4)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_cpu_tiny(batch_sizes: list[int], max_new_tokens: int, repeats: int,
                   threads: int) -> list[dict]:
    from src.models.llava import load_llava, load_processor

    torch.set_num_threads(threads)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_models(Path(tmp), names=["llava"])["llava"])
        model = load_llava(model_dir, 32, dtype=torch.float32).eval()
        processor = load_processor(model_dir, 32)
    rng = random.Random(0)
    images = [Image.new("RGB", (320, 240), tuple(rng.randrange(256) for _ in range(3)))
              for _ in range(max(batch_sizes))]

    def make_inputs(batch_size: int) -> dict:
        return dict(build_inputs(processor, images[:batch_size], [PROMPT] * batch_size))

    settings = CaptionSettings(PROMPT, max_new_tokens, min_new_tokens=max_new_tokens)
    return _generation_rows(model, make_inputs, batch_sizes, settings, device, repeats,
                            f"cpu-tiny fp32 {threads} threads, {max_new_tokens} new tokens")


def bench_real(batch_sizes: list[int], max_new_tokens: int, repeats: int,
               device: torch.device) -> list[dict]:
    from transformers import CLIPModel, LlavaForConditionalGeneration

    config = real_config("llava")
    torch.manual_seed(0)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(config, dtype=torch.bfloat16).eval()
    vision = config.vision_config
    image_tokens = (vision.image_size // vision.patch_size) ** 2
    text_vocab = config.image_token_id  # ordinary word ids lie below <image>

    def make_inputs(batch_size: int) -> dict:
        ids = torch.randint(3, text_vocab, (batch_size, PROMPT_TEXT_TOKENS + image_tokens))
        ids[:, 0] = 1  # <s>
        ids[:, 6:6 + image_tokens] = config.image_token_id
        pixels = torch.randn(batch_size, 3, vision.image_size, vision.image_size)
        return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
                "pixel_values": pixels.to(device, torch.bfloat16)}

    settings = CaptionSettings(PROMPT, max_new_tokens, min_new_tokens=max_new_tokens)
    rows = _generation_rows(model, make_inputs, batch_sizes, settings, device, repeats,
                            f"{device.type}-real llava-1.5-7b bf16, {max_new_tokens} new tokens")
    if device.type == "cuda":
        rows.append({"part": "cuda-real peak memory GiB",
                     "value": round(torch.cuda.max_memory_allocated() / 2**30, 1)})
        print(json.dumps(rows[-1]), flush=True)
    del model

    clip_config = real_config("clip")
    with torch.device(device):
        clip = CLIPModel._from_config(clip_config, dtype=torch.float32).eval()
    batch = 64
    side = clip_config.vision_config.image_size
    pixels = torch.randn(batch, 3, side, side, device=device)
    texts = torch.randint(0, clip_config.text_config.vocab_size - 2, (6 * batch, 20), device=device)

    def clip_step() -> None:  # one image, one candidate and five references per image
        with torch.inference_mode():
            clip.get_image_features(pixel_values=pixels)
            clip.get_text_features(input_ids=texts)

    seconds = median_seconds(clip_step, device, repeats)
    rows.append({"part": f"{device.type}-real clipscore vit-b/32 fp32", "batch_size": batch,
                 "images_per_s": round(batch / seconds, 1)})
    print(json.dumps(rows[-1]), flush=True)
    return rows


def bench_metrics(num_images: int) -> list[dict]:
    from src.eval.metrics import score_captions

    rng = random.Random(0)
    words = list(caption_words())

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(8, 14))) + "."

    references = {i: [sentence() for _ in range(5)] for i in range(num_images)}
    predictions = {i: sentence() for i in range(num_images)}
    rows = []
    for meteor in (False, True):
        start = time.perf_counter()
        score_captions(predictions, references, meteor=meteor)
        rows.append({"part": f"metrics {num_images} images x 5 refs",
                     "meteor": meteor, "seconds": round(time.perf_counter() - start, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=("cpu-tiny", "real", "metrics"),
                        default=["cpu-tiny", "metrics"])
    parser.add_argument("--device", default="cuda", help="for the real part")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="fixed generation length (default: 24 cpu-tiny, 64 real)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, cpu-tiny part")
    parser.add_argument("--num-images", type=int, default=5000, help="metrics part")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON")
    args = parser.parse_args()

    rows = []
    if "cpu-tiny" in args.parts:
        rows += bench_cpu_tiny(args.batch_sizes, args.max_new_tokens or 24, args.repeats,
                               args.threads)
    if "real" in args.parts:
        rows += bench_real(args.batch_sizes, args.max_new_tokens or 64, args.repeats,
                           torch.device(args.device))
    if "metrics" in args.parts:
        rows += bench_metrics(args.num_images)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
