"""Caption COCO val2017 with LLaVA (base or + LoRA adapter) and print BLEU-4, CIDEr and the rest.

    python -m src.eval.evaluate_coco --model models/lora --images data/coco/val2017 \\
        --ann data/coco/annotations/captions_val2017.json \\
        --instances data/coco/annotations/instances_val2017.json --num-examples 500 --batch-size 8
    torchrun --nproc_per_node 4 -m src.eval.evaluate_coco ...   # data-parallel, same output

The seed's command and the DVC `evaluate` / `evaluate_base` stages alike (dvc.yaml gives
the paths). With `--model` it scores the fine-tuned model (LoRA merged into the base);
without, the zero-shot base model, or, when evaluate.baseline is false, writes a "disabled"
stub and empty outputs at once. Knobs not given on the command line default from
params.yaml (`evaluate`, `caption_prompt`, `model_id`, `clip_model_id`, `seed`). A killed
run resumes from its finished caption shards.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.eval.intervals import format_interval
from src.params import load_params, override

logger = logging.getLogger(__name__)
DISABLED = {"baseline": "disabled"}  # what `dvc metrics show` lists for a skipped baseline

LABELS = {"bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
          "meteor": "METEOR", "rougeL": "ROUGE-L", "cider": "CIDEr",
          "cider_wrong_images": "CIDEr, wrong images", "clipscore": "CLIPScore",
          "refclipscore": "RefCLIPScore", "chair_i": "CHAIR_i", "chair_s": "CHAIR_s"}


def format_table(metrics: dict[str, float | int]) -> str:
    """BLEU-4 and CIDEr (with its wrong-image control) first, then the other scores, then the
    counts; a score's 95 % bootstrap interval over images beside it."""
    first = ("bleu4", "cider", "cider_wrong_images")
    order = [*first, *(k for k in LABELS if k not in first)]
    lines = [f"{LABELS[k]:<20}{metrics[k]:>9.4f}{format_interval(metrics, k)}"
             if metrics[k] is not None else f"{LABELS[k]:<20}unavailable"
             for k in order if k in metrics]
    lines += [f"{k:<20}{metrics[k]:>9d}" for k in ("n_images", "n_empty", "skipped")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="LoRA adapter dir; omit for the base model")
    parser.add_argument("--images", type=Path, required=True, help="val2017 image directory")
    parser.add_argument("--ann", type=Path, required=True, help="captions_val2017.json")
    parser.add_argument("--instances", type=Path,
                        help="instances_val2017.json, for CHAIR (left out when absent)")
    parser.add_argument("--model-id", help="base LLaVA hub id or dir [params: model_id]")
    parser.add_argument("--clip-model-id", help="CLIP for CLIPScore [params: clip_model_id]")
    parser.add_argument("--model-revision", help="hub commit, branch or tag of the base "
                        "[params: model_revision]")
    parser.add_argument("--clip-model-revision", help="[params: clip_model_revision]")
    parser.add_argument("--num-examples", type=int, help="0 = all [params: evaluate.*]")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--num-beams", type=int)
    parser.add_argument("--prompt", help="[params: caption_prompt]")
    parser.add_argument("--meteor", action=argparse.BooleanOptionalAction)
    parser.add_argument("--gallery-images", type=int)
    parser.add_argument("--seed", type=int, help="image subset [params: seed]")
    parser.add_argument("--num-workers", type=int,
                        help="image-decoding workers [params: evaluate.num_workers]")
    parser.add_argument("--out", type=Path, default=Path("metrics/eval_coco.json"),
                        help="metrics JSON")
    parser.add_argument("--predictions", type=Path,
                        default=Path("data/processed/predictions_eval_coco.json"),
                        help="COCO results JSON [{image_id, caption}]")
    parser.add_argument("--per-image", type=Path, help="per-image scores CSV")
    parser.add_argument("--gallery", type=Path, help="gallery PNG")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = override(load_params(args.params), {
        "model_id": args.model_id, "clip_model_id": args.clip_model_id, "seed": args.seed,
        "model_revision": args.model_revision, "clip_model_revision": args.clip_model_revision,
        "caption_prompt": args.prompt,
        **{f"evaluate.{name}": getattr(args, name) for name in (
            "num_examples", "batch_size", "max_new_tokens", "num_beams", "meteor",
            "gallery_images", "num_workers")}})
    # Imported once params are valid: the ML libraries take seconds to import.
    import torch

    from src.eval.run import EvalConfig, EvalOutputs, evaluate, summary, write_outputs
    from src.models.device_policy import process_group, resolve_device

    outputs = EvalOutputs(metrics=args.out, predictions=args.predictions,
                          per_image=args.per_image, gallery=args.gallery)
    if args.model is None and not params.evaluate.baseline:
        write_outputs(outputs, DISABLED, {}, [], [],
                      notice="baseline disabled (evaluate.baseline=false)")
        logger.info("evaluate.baseline is false: wrote a disabled stub to %s", args.out)
        return

    torch.manual_seed(params.seed)
    config = EvalConfig.from_params(params, adapter_dir=args.model, images_dir=args.images,
                                    ann_path=args.ann, instances_path=args.instances)
    with process_group(resolve_device()) as state:
        metrics = evaluate(config, outputs, state)
    if metrics is not None:
        logger.info("%s: %s", "fine-tuned" if args.model else "base", summary(metrics))
        print(format_table(metrics))


if __name__ == "__main__":
    main()
