"""Print a YAML file of flat param overrides as `dvc exp run` arguments, one per line.

    python -m stages.overrides configs/demo.yaml | xargs -d '\\n' dvc exp run -n demo
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml


def override_args(path: Path) -> list[str]:
    overrides = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    args = []
    for key, value in overrides.items():
        if isinstance(value, str):  # quoted: Hydra's override grammar reserves ()[]{}|*,= ...
            text = "'" + value.replace("'", "\\'") + "'"
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
            text = text.removesuffix("...\n").strip()
        args += ["-S", f"{key}={text}"]
    return args


if __name__ == "__main__":
    print("\n".join(override_args(Path(sys.argv[1]))))
