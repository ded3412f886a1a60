"""Stage `phrases`: choose the train images and extract their groundable noun phrases.

    dvc repro phrases
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.params import load_params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, required=True, help="captions_train2017.json")
    parser.add_argument("--captions-out", type=Path, required=True)
    parser.add_argument("--phrases-out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    # Imported once params are valid: the ML libraries take seconds to import.
    from src.augment.phrases import run_phrases
    run_phrases(params, args.captions, args.captions_out, args.phrases_out)


if __name__ == "__main__":
    main()
