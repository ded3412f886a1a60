"""Print YAML files of flat param overrides (later files win) and raw `--set key=value`
overrides (passed verbatim, e.g. a grid `clip_threshold=0.22,0.26`) as `dvc exp run`
arguments, one per line.

    python -m tools.overrides configs/demo.yaml | xargs -d '\\n' dvc exp run -n demo
    python -m tools.overrides configs/demo.yaml --set clip_threshold=0.4,0.6 --seeds 3 \\
        | xargs -d '\\n' dvc exp run --queue -n sweep    # 2 thresholds x training seeds 0-2

`--seeds N` queues every configuration once per training seed (`train.seed` = 0..N-1): a
grid of DVC's sweep syntax, so the data stages run once and only train/evaluate repeat.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml


def load_overrides(paths: list[Path]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for path in paths:
        overrides.update(yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {})
    return overrides


def as_args(overrides: dict[str, Any]) -> list[str]:
    args = []
    for key, value in overrides.items():
        if isinstance(value, str):  # quoted: Hydra's override grammar reserves ()[]{}|*,= ...
            text = "'" + value.replace("'", "\\'") + "'"
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
            text = text.removesuffix("...\n").strip()
        args += ["-S", f"{key}={text}"]
    return args


def override_args(path: Path) -> list[str]:
    return as_args(load_overrides([path]))


def seed_grid(seeds: int) -> list[str]:
    """`--set` items repeating every configuration for training seeds 0..seeds-1."""
    if seeds < 1:
        raise SystemExit(f"--seeds {seeds}: need at least one training seed")
    return [f"train.seed={','.join(str(seed) for seed in range(seeds))}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="*")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, help="queue each configuration once per "
                        "training seed 0..N-1 (train.seed)")
    args = parser.parse_args(argv)
    if args.seeds is not None:
        args.set += seed_grid(args.seeds)
    raw_keys = {item.split("=", 1)[0] for item in args.set}
    overrides = {key: value for key, value in load_overrides(args.files).items()
                 if key not in raw_keys}
    print("\n".join([*as_args(overrides), *(arg for item in args.set for arg in ("-S", item))]))


if __name__ == "__main__":
    main()
