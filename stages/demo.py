"""Stage `demo`: the offline world of `make demo` — synthetic COCO plus tiny local models.

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
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    # Imported once params are valid: the ML libraries take seconds to import.
    from src.data.synthetic_coco import write_demo
    from src.models.tiny import build_tiny_models

    shutil.rmtree(args.out, ignore_errors=True)
    write_demo(args.out, params.demo.num_train, params.demo.num_val, params.seed)
    models = build_tiny_models(args.out / "models", seed=params.seed)
    print(f"demo: {params.demo.num_train} train + {params.demo.num_val} val images, "
          f"models {', '.join(str(p) for p in models.values())}")


if __name__ == "__main__":
    main()
