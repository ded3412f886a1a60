"""Stage `demo`: the offline world of `make demo` — synthetic COCO plus tiny local models.

The models are the tiny checkpoints of src/demo/tiny.py carrying the trained weights
committed under assets/demo_models (`make demo-models` retrains them), checked on the
held-out val split: metrics/demo_models.json.

    dvc repro demo   # writes data/demo/{train2017,val2017,annotations,models}
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from src.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True,
                        help="trained weights (assets/demo_models)")
    parser.add_argument("--metrics", type=Path, required=True,
                        help="held-out detector recall, CLIP accuracy and CLIPScore ranking "
                             "(JSON)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    # Imported once params are valid: the ML libraries take seconds to import.
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from src.data.atomic import atomic_write_json
    from src.demo.heldout import clip_accuracy, clipscore_ranking, detector_recall
    from src.demo.synthetic_coco import write_demo
    from src.demo.tiny import build_tiny_models
    from src.demo.training import reproducible
    from src.demo.weights import trained_inits
    from src.models.clip import load_clip
    from src.models.hub import load_pretrained

    shutil.rmtree(args.out, ignore_errors=True)
    write_demo(args.out, params.demo.num_train, params.demo.num_val, params.seed)
    models = build_tiny_models(args.out / "models", seed=params.seed,
                               inits=trained_inits(args.weights))
    with reproducible(params.seed):
        detector = models["grounding-dino"]
        metrics = detector_recall(
            load_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained, detector).eval(),
            load_pretrained(AutoProcessor.from_pretrained, detector), args.out, "val")
        clip, processor = load_clip(str(models["clip"]), torch.device("cpu"))
        metrics |= clip_accuracy(clip, processor, args.out, "val",
                                 params.clip_score.crop_pad_frac, params.seed)
        metrics |= clipscore_ranking(clip, processor, args.out, "val", params.seed)
    atomic_write_json(args.metrics, metrics)
    print(f"demo: {params.demo.num_train} train + {params.demo.num_val} val images, "
          f"models {', '.join(str(p) for p in models.values())}; held-out: "
          + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in metrics.items()))


if __name__ == "__main__":
    main()
