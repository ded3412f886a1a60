"""Step `phrases`: choose the train images and extract their groundable noun phrases.

    dvc repro phrases   # python -m src.augment.phrases --captions ... (dvc.yaml)

The DVC stage runs `main`; the seed command (`python -m src.augment.augment_gdino_clip`)
calls `run`, so they cannot drift apart. One module per step, so that editing one step
re-runs only its own DVC stage.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from src.params import Params, load_params

logger = logging.getLogger(__name__)


def run(params: Params, captions_path: Path, captions_out: Path, phrases_out: Path) -> None:
    """Choose the train images and extract their groundable noun phrases."""
    # Imported here, once main has checked the params: spaCy and pandas take seconds.
    import pandas as pd
    from tqdm import tqdm

    from src.data.atomic import atomic_path
    from src.data.coco import load_captions, select_images
    from src.data.noun_phrases import extract_phrases, load_spacy, select_phrases

    caption_set = load_captions(captions_path)
    images = select_images(caption_set, params.max_images, params.seed)
    by_image = caption_set.by_image()
    captions = [c for image in images for c in sorted(by_image[image.image_id],
                                                       key=lambda c: c.caption_id)]
    nlp = load_spacy(params.phrases.spacy_model)
    found = extract_phrases(nlp, tqdm(captions, desc="phrases", unit="caption"),
                            params.phrases.max_phrase_words)
    phrases = select_phrases(found, params.phrases.max_phrases_per_image)

    image_rows = {i.image_id: {"image_id": i.image_id, "file_name": i.file_name,
                               "width": i.width, "height": i.height} for i in images}
    caption_text = {c.caption_id: c.caption for c in captions}
    captions_df = pd.DataFrame([{**image_rows[c.image_id], "caption_id": c.caption_id,
                                 "caption": c.caption} for c in captions])
    phrases_df = pd.DataFrame([{**image_rows[p.image_id], "caption_id": p.caption_id,
                                "caption": caption_text[p.caption_id], "phrase": p.phrase,
                                "span_start": p.span_start, "span_end": p.span_end}
                               for p in phrases])
    for frame, out in ((captions_df, captions_out), (phrases_df, phrases_out)):
        with atomic_path(out) as tmp:
            frame.to_parquet(tmp, index=False)
    no_phrases = len(images) - phrases_df["image_id"].nunique()
    logger.info("%d images, %d captions -> %d phrases (%.1f per image); %d images have none",
                len(images), len(captions), len(phrases_df), len(phrases_df) / max(1, len(images)),
                no_phrases)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, required=True, help="captions_train2017.json")
    parser.add_argument("--captions-out", type=Path, required=True)
    parser.add_argument("--phrases-out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(load_params(args.params), args.captions, args.captions_out, args.phrases_out)


if __name__ == "__main__":
    main()
