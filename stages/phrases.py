"""Stage `phrases`: choose the train images and extract their groundable noun phrases.

    dvc repro phrases
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from src.data.atomic import atomic_path
from src.data.coco import load_captions, select_images
from src.data.phrases import extract_phrases, load_spacy, select_phrases
from stages.params import load_params

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=Path, required=True, help="captions_train2017.json")
    parser.add_argument("--captions-out", type=Path, required=True)
    parser.add_argument("--phrases-out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)

    caption_set = load_captions(args.captions)
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
    for frame, out in ((captions_df, args.captions_out), (phrases_df, args.phrases_out)):
        with atomic_path(out) as tmp:
            frame.to_parquet(tmp, index=False)
    no_phrases = len(images) - phrases_df["image_id"].nunique()
    logger.info("%d images, %d captions -> %d phrases (%.1f per image); %d images have none",
                len(images), len(captions), len(phrases_df), len(phrases_df) / max(1, len(images)),
                no_phrases)


if __name__ == "__main__":
    main()
