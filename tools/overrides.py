"""Print YAML files of flat param overrides (later files win) and raw `--set key=value`
overrides (passed verbatim, e.g. a grid `clip_threshold=0.22,0.26`) as `dvc exp run`
arguments, one per line.

    python -m tools.overrides configs/demo.yaml | xargs -d '\\n' dvc exp run -n demo
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="*")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    raw_keys = {item.split("=", 1)[0] for item in args.set}
    overrides = {key: value for key, value in load_overrides(args.files).items()
                 if key not in raw_keys}
    print("\n".join([*as_args(overrides), *(arg for item in args.set for arg in ("-S", item))]))


if __name__ == "__main__":
    main()
