"""Download only the COCO images a run samples, one file each, resumable and checked.

With `max_images: 5000` a run reads about 0.8 GB of train2017's 19.3 GB zip. The images
are the ones `select_images` draws (the very function the phrases step, training's
validation and evaluate call, with the same seed), fetched by the path of their
`coco_url` from the mirror given as base URL, over a few parallel connections.

COCO publishes no per-image checksum, so a file counts as complete when it has every
byte the server announced (Content-Length, or the total of Content-Range) and decodes as
an image through the one image-reading path (src/data/images.py: not truncated, not a
decompression bomb). Each file streams into `<name>.part`, resumed with an HTTP Range
request where the server allows it, and is renamed only once checked; a file already in
place is decoded again and fetched afresh if it does not decode.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from tqdm import tqdm

from src.data.coco import load_captions, resolve_image_path, select_images
from src.data.download import fetch_to_part
from src.data.images import ImageSkip, load_rgb
from src.params import Params

logger = logging.getLogger(__name__)

ATTEMPTS = 2  # a file that arrives whole but does not decode is fetched once more


@dataclass(frozen=True)
class ImageFile:
    url: str
    dest: Path


class IncompleteImage(RuntimeError):
    """A transfer ended early or an image arrived corrupt; running again resumes it."""


def images_needed(params: Params) -> dict[str, int]:
    """Images each split's run reads, by `select_images` size (0 = all: the whole zip).

    Val serves evaluate (`evaluate.num_examples`) and training's validation loss
    (`train.val_examples`); a larger sample holds a smaller one, so the larger suffices.
    """
    val_counts = (params.evaluate.num_examples, params.train.val_examples)
    return {"train2017": params.max_images, "val2017": 0 if 0 in val_counts else max(val_counts)}


def sampled_files(captions_path: Path, num_images: int, seed: int, out_dir: Path,
                  base_url: str) -> list[ImageFile]:
    """The files of `select_images(captions, num_images, seed)`: each image's `coco_url`
    path served from `base_url`, saved under `out_dir` by its `file_name` (kept inside)."""
    files = []
    for image in select_images(load_captions(captions_path), num_images, seed):
        if not image.coco_url:
            raise ValueError(f"{captions_path}: image {image.image_id} has no coco_url")
        url_path = urlsplit(image.coco_url).path
        split_dir = Path(url_path).parent.name  # train2017 or val2017
        files.append(ImageFile(f"{base_url.rstrip('/')}{url_path}",
                               resolve_image_path(out_dir / split_dir, image.file_name)))
    return files


def _decodes(path: Path) -> str | None:
    """None when `path` decodes as an image, else why not."""
    try:
        load_rgb(path)
    except ImageSkip as skip:
        return skip.reason
    return None


def fetch_image(file: ImageFile, timeout_s: float = 60) -> int:
    """Make `file.dest` a complete, decodable copy of `file.url`; returns the bytes fetched."""
    if file.dest.exists():
        if _decodes(file.dest) is None:
            return 0
        logger.warning("%s does not decode: fetching it again", file.dest)
        file.dest.unlink()
    file.dest.parent.mkdir(parents=True, exist_ok=True)
    part = file.dest.with_name(file.dest.name + ".part")
    fetched = 0
    for _ in range(ATTEMPTS):
        before = part.stat().st_size if part.exists() else 0
        total = fetch_to_part(file.url, part, None, timeout_s, progress=False)
        got = part.stat().st_size
        fetched += got - before
        if total is not None and got < total:
            raise IncompleteImage(f"{file.url}: stopped at {got} of {total} bytes")
        problem = "larger than announced" if total is not None and got > total else (
            _decodes(part))
        if problem is None:
            os.replace(part, file.dest)
            return fetched
        logger.warning("%s: %s (%d bytes): fetching it again", file.url, problem, got)
        part.unlink()
    raise IncompleteImage(f"{file.url}: does not decode as an image after {ATTEMPTS} tries")


def fetch_images(files: Sequence[ImageFile], connections: int = 8,
                 timeout_s: float = 60) -> None:
    """`fetch_image` for each file over `connections` parallel connections, with a progress
    bar; every failure is listed at the end, and running again resumes them."""
    failed: list[str] = []
    with (ThreadPoolExecutor(max_workers=connections) as pool,
          tqdm(total=len(files), desc="images", unit="img") as bar):
        futures = {pool.submit(fetch_image, f, timeout_s): f for f in files}
        fetched = 0
        for future in as_completed(futures):
            try:
                fetched += future.result()
            except (OSError, IncompleteImage) as error:  # URLError and HTTPError are OSErrors
                logger.warning("%s: %s", futures[future].url, error)
                failed.append(futures[future].url)
            bar.update()
            bar.set_postfix_str(f"{fetched / 2**20:.1f} MiB")
    if failed:
        raise IncompleteImage(f"{len(failed)} of {len(files)} images failed (first: "
                              f"{sorted(failed)[0]}); run again to resume them")
    logger.info("%d images ready (%.1f MiB fetched)", len(files), fetched / 2**20)
