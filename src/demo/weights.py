"""The demo's trained tiny models: retrain them (entry point) and load them into checkpoints.

Training takes longer than `make demo` may, so the weights are committed under
`assets/demo_models/` (`make demo-models` retrains them byte for byte) and the demo stage
builds its tiny checkpoints as before, then loads these weights into them:
- `clip.safetensors`: the CLIPModel (src/demo/train_clip.py);
- `grounding-dino.safetensors`: the GroundingDinoForObjectDetection
  (src/demo/train_detector.py);
- the LLaVA gets the trained CLIP's vision encoder as its vision tower (one config:
  `tiny_vision_config`), so the demo's captioner sees through a trained encoder.

    python -m src.demo.weights --out assets/demo_models
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm
from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor, PreTrainedModel

from src.demo.tiny import build_tiny_models
from src.demo.train_clip import ClipRecipe, train_clip
from src.demo.train_detector import DetectorRecipe, train_detector
from src.demo.training import reproducible
from src.models.clip import load_clip
from src.models.hub import load_pretrained
from src.params import load_params

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo_models"
TRAINED = ("clip", "grounding-dino")


def weights_file(weights_dir: Path, name: str) -> Path:
    return weights_dir / f"{name}.safetensors"


VISION_PREFIX = "vision_model."  # the CLIPModel keys of its image encoder: all of LLaVA's tower


def _llava_vision_from_clip(weights_dir: Path) -> Callable[[PreTrainedModel], None]:
    def init(model: PreTrainedModel) -> None:
        clip = load_file(weights_file(weights_dir, "clip"))
        vision = {key.removeprefix(VISION_PREFIX): value for key, value in clip.items()
                  if key.startswith(VISION_PREFIX)}
        model.model.vision_tower.load_state_dict(vision, strict=True)
    return init


def trained_inits(weights_dir: Path = WEIGHTS_DIR) -> dict[str, Callable[[PreTrainedModel], None]]:
    """`build_tiny_models(inits=...)`: the trained weights of every model, loaded strictly."""
    def load(name: str) -> Callable[[PreTrainedModel], None]:
        return lambda model: model.load_state_dict(load_file(weights_file(weights_dir, name)),
                                                   strict=True)
    inits = {name: load(name) for name in TRAINED}
    inits["llava"] = _llava_vision_from_clip(weights_dir)
    return inits


def save_weights(model: PreTrainedModel, path: Path) -> None:
    """Every state-dict entry, tied ones as copies: `save_model` would record which tied
    names it dropped in a header whose order changes from run to run."""
    tensors = {key: value.detach().clone().contiguous()
               for key, value in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def train_model(name: str, out_dir: Path, seed: int, pad_frac: float,
                recipes: dict[str, object]) -> list[float]:
    """Train model `name` from its seeded random tiny checkpoint, loaded as the pipeline loads
    it, and write `out_dir/<name>.safetensors`; returns the loss of every step."""
    with tempfile.TemporaryDirectory() as scratch, reproducible(seed):
        checkpoint = build_tiny_models(Path(scratch), seed, [name])[name]
        recipe = recipes[name]
        bar = tqdm(total=recipe.steps, desc=f"train {name}", mininterval=5)
        def on_step(step: int, loss: float) -> None:
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if name == "clip":
            model, processor = load_clip(str(checkpoint), torch.device("cpu"))
            losses = train_clip(model, processor, recipe, seed, pad_frac, on_step)
        else:
            processor = load_pretrained(AutoProcessor.from_pretrained, checkpoint)
            model = load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained,
                                    checkpoint)
            losses = train_detector(model, processor, recipe, seed, on_step)
        bar.close()
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = out_dir / f".{name}.safetensors.partial"
        save_weights(model, partial)
        partial.replace(weights_file(out_dir, name))
    return losses


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--models", nargs="+", choices=TRAINED, default=list(TRAINED))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    params = load_params(args.params)
    recipes = {"clip": ClipRecipe(), "grounding-dino": DetectorRecipe()}
    for name in args.models:
        start = time.perf_counter()
        losses = train_model(name, args.out, params.seed, params.clip_score.crop_pad_frac,
                             recipes)
        logger.info("%s: %d steps in %.0f s, loss %.3f -> %.3f (last 50 steps' mean), wrote %s",
                    name, len(losses), time.perf_counter() - start, losses[0],
                    sum(losses[-50:]) / len(losses[-50:]), weights_file(args.out, name))


if __name__ == "__main__":
    main()
