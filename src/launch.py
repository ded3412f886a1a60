"""Start a stage module on `launch.num_processes` processes: how dvc.yaml's data-parallel
stages (detect, clip_score, train, evaluate, evaluate_base) reach N GPUs under `dvc repro`.

    python -m src.launch src.augment.detect --phrases ... --params params.yaml

With 1 process the module runs in this process, exactly as `python -m MODULE ...` would.
With N > 1 this process becomes `accelerate launch --multi_gpu --num_processes N
[--config_file launch.config_file] -m MODULE ...` (on a CPU export ACCELERATE_USE_CPU=1: the
processes then talk over gloo). The count is read from the params file the stage reads
(its --params, else params.yaml), not templated into the command: DVC records each stage's
command, so a count in it would invalidate the cache, while `launch` is in no stage's
params list.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

from src.params import LaunchParams, load_params


def params_path(args: list[str]) -> Path:
    """The params file a stage command reads: its --params value, else params.yaml."""
    for n, arg in enumerate(args):
        if arg == "--params" and n + 1 < len(args):
            return Path(args[n + 1])
        if arg.startswith("--params="):
            return Path(arg.split("=", 1)[1])
    return Path("params.yaml")


def accelerate_command(settings: LaunchParams, module: str, args: list[str]) -> list[str]:
    """The `accelerate launch` command line that runs `module` on settings.num_processes."""
    # Without a config, a free port: two runs on one machine must not collide on 29500.
    where = (["--config_file", settings.config_file] if settings.config_file
             else ["--main_process_port", "0"])
    return [sys.executable, "-m", "accelerate.commands.launch", *where, "--multi_gpu",
            "--num_processes", str(settings.num_processes), "-m", module, *args]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        sys.exit("usage: python -m src.launch MODULE [ARGS...]")
    module, args = argv[0], argv[1:]
    settings = load_params(params_path(args)).launch
    if settings.num_processes == 1:
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    command = accelerate_command(settings, module, args)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
