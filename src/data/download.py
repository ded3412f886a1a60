"""Download and extract the official COCO 2017 archives, resumably and verified.

    python -m src.data.download --out data/coco [--what train2017,val2017,annotations]

Each archive streams into `<out>/<name>.part` (an interrupted run resumes it with an HTTP
Range request), is checked against its published size and MD5, renamed to `<out>/<name>`
only then, and extracted into `<out>`; a marker file makes a finished extraction a no-op,
and the zip is then deleted (`--keep-archives` keeps it).
With --params (as `make coco` passes), a split the run samples is fetched image by image
instead (src/data/image_download.py): about 0.8 GB for `max_images: 5000`, not 19.3 GB.
Without it: standard library + tqdm only, so it runs before anything else is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from src.data.atomic import atomic_write_text
from src.data.coco import path_inside

logger = logging.getLogger(__name__)

# Plain HTTP as COCO's own download links use; the MD5 check below guards integrity.
COCO_BASE_URL = "http://images.cocodataset.org"
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Archive:
    url_path: str  # relative to the base URL
    size_bytes: int
    md5: str

    @property
    def file_name(self) -> str:
        return self.url_path.rsplit("/", 1)[-1]


# cocodataset.org prints no checksums. These MD5s are the S3 objects' ETags, the values that
# PaddleDetection, NVIDIA DeepLearningExamples and Intel neural-compressor check against; the
# sizes are the served Content-Length, recorded identically by many independent downloads.
ARCHIVES = {
    "train2017": Archive("zips/train2017.zip", 19_336_861_798, "cced6f7f71b7629ddf16f17bbcfab6b2"),
    "val2017": Archive("zips/val2017.zip", 815_585_330, "442b8da7639aecaf257c1dceb8ba8c80"),
    "annotations": Archive(
        "annotations/annotations_trainval2017.zip", 252_907_541, "f4bbac642086de4f52a3fdda2de5fa2c"
    ),
}


class ChecksumError(RuntimeError):
    """A finished download does not match its published size or MD5."""


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _total_size(content_range: str) -> int | None:
    """The full size in a Content-Range header ("bytes 0-9/1234", "bytes */1234")."""
    total = content_range.rpartition("/")[2]
    return int(total) if total.isdigit() else None


def fetch_to_part(url: str, part_path: Path, size_bytes: int | None, timeout_s: float,
                   progress: bool = True) -> int | None:
    """Append the bytes `part_path` lacks, asking for them with a Range request.

    Returns the full size: `size_bytes` where known in advance, else as the server states
    it (None where it states none). A part already complete is answered 416 by the server.
    """
    offset = part_path.stat().st_size if part_path.exists() else 0
    if size_bytes is not None and offset > size_bytes:
        logger.warning("%s is larger than the archive: starting again", part_path)
        offset = 0
    if offset == size_bytes:
        return size_bytes
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise
        total = _total_size(error.headers.get("Content-Range", ""))
        if total == offset:
            return total
        logger.warning("%s: %s is past the file's end: starting again", url, part_path)
        part_path.unlink()
        return fetch_to_part(url, part_path, size_bytes, timeout_s, progress)
    with response:
        if offset and response.status != 206:
            logger.warning("server ignored the Range request for %s: starting again", url)
            offset = 0
        if offset:
            content_range = response.headers.get("Content-Range", "")
            if not content_range.startswith(f"bytes {offset}-"):
                raise RuntimeError(f"{url}: asked for bytes {offset}-, got {content_range!r}")
            total = _total_size(content_range)
            logger.info("resuming %s at %.1f MiB", part_path.name, offset / 2**20)
        else:
            length = response.headers.get("Content-Length", "")
            total = int(length) if length.isdigit() else None
        with (
            part_path.open("ab" if offset else "wb") as f,
            tqdm(
                total=size_bytes or total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part_path.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            while chunk := response.read(CHUNK_BYTES):
                f.write(chunk)
                bar.update(len(chunk))
    return size_bytes if size_bytes is not None else total


def download(
    url: str, dest_path: Path, *, size_bytes: int, md5: str, timeout_s: float = 60
) -> None:
    """Download `url` to `dest_path` unless it is there; resume, verify, then rename.

    `dest_path` only ever appears verified, so an existing one is trusted without re-hashing
    (18 GB for train2017). A part file that fails the check is deleted, since resuming it can
    never fix it, and ChecksumError is raised.
    """
    if dest_path.exists():
        logger.info("%s already downloaded", dest_path)
        return
    dest_path.parent.mkdir(parents=True, exist_ok=True)
    part_path = dest_path.with_name(dest_path.name + ".part")
    fetch_to_part(url, part_path, size_bytes, timeout_s)

    got_bytes = part_path.stat().st_size
    if got_bytes < size_bytes:
        # urllib returns b"" (no error) when a server closes a response early.
        raise RuntimeError(
            f"{url}: transfer stopped at {got_bytes} of {size_bytes} bytes; run again to resume"
        )
    logger.info("verifying %s", part_path)
    got_md5 = _md5(part_path) if got_bytes == size_bytes else "not computed"
    if got_bytes != size_bytes or got_md5 != md5:
        part_path.unlink()
        raise ChecksumError(
            f"{url}: expected {size_bytes} bytes with MD5 {md5}, got {got_bytes} bytes with "
            f"MD5 {got_md5}; deleted {part_path}, run again to download it afresh"
        )
    os.replace(part_path, dest_path)
    logger.info("downloaded and verified %s", dest_path)


def _extracted_marker(zip_name: str, out_dir: Path) -> Path:
    return out_dir / f".{zip_name}.extracted"


def _already_extracted(member: zipfile.ZipInfo, out_dir: Path) -> bool:
    """True for a file member already on disk at its full size: a member cut short by an
    interruption is shorter, so a resumed extraction writes only what is missing."""
    path = path_inside(out_dir, member.filename)
    return (path is not None and not member.is_dir() and path.is_file()
            and path.stat().st_size == member.file_size)


def extract(zip_path: Path, out_dir: Path) -> None:
    """Extract `zip_path` into `out_dir` once; a marker written last records completion.

    An interrupted extraction leaves no marker; the next run extracts only the members not
    yet on disk at their full size, so resuming needs only the space still missing.
    """
    marker_path = _extracted_marker(zip_path.name, out_dir)
    if marker_path.exists():
        logger.info("%s already extracted into %s", zip_path.name, out_dir)
        return
    with zipfile.ZipFile(zip_path) as archive:
        members = archive.infolist()
        missing = [m for m in members if not _already_extracted(m, out_dir)]
        if len(missing) < len(members):
            logger.info("resuming the extraction of %s: %d of %d members left",
                        zip_path.name, len(missing), len(members))
        # ZipFile.extract drops absolute paths and ".." parts, so members stay in out_dir.
        for member in tqdm(missing, desc=f"extract {zip_path.name}", unit="file"):
            archive.extract(member, out_dir)
    atomic_write_text(marker_path, f"{len(members)} members\n")
    logger.info("extracted %d members of %s into %s", len(members), zip_path.name, out_dir)


def fetch_archive(archive: Archive, out_dir: Path, base_url: str = COCO_BASE_URL,
                  keep_archive: bool = False) -> None:
    """Download (or resume) and extract one archive; a no-op once it has been extracted.

    The zip is deleted after extraction unless `keep_archive` (train2017's is 19 GB, and
    the extraction marker alone already stops a re-download).
    """
    zip_path = out_dir / archive.file_name
    if _extracted_marker(zip_path.name, out_dir).exists():  # the archive may be deleted by now
        logger.info("%s already extracted into %s", zip_path.name, out_dir)
        return
    download(
        f"{base_url.rstrip('/')}/{archive.url_path}",
        zip_path,
        size_bytes=archive.size_bytes,
        md5=archive.md5,
    )
    extract(zip_path, out_dir)
    if not keep_archive:
        zip_path.unlink()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for archives and files")
    parser.add_argument(
        "--what",
        default=",".join(ARCHIVES),
        help=f"comma-separated subset of {','.join(ARCHIVES)} (default: all)",
    )
    parser.add_argument(
        "--base-url", default=COCO_BASE_URL, help="mirror of images.cocodataset.org"
    )
    parser.add_argument("--keep-archives", action="store_true",
                        help="keep the zips after extraction (default: delete them)")
    parser.add_argument("--params", type=Path,
                        help="size the download to this run: where it samples images "
                             "(max_images, evaluate.num_examples and train.val_examples > 0), "
                             "fetch only those images instead of the split's zip")
    parser.add_argument("--connections", type=int, default=8,
                        help="parallel connections for single images (default: 8)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.what.split(",") if name.strip()]
    unknown = sorted(set(names) - ARCHIVES.keys())
    if unknown:
        parser.error(f"--what: unknown {unknown}; choose from {', '.join(ARCHIVES)}")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    needed, seed = {}, 0
    if args.params:  # imported here: the whole-zip download needs no more than the stdlib
        from src.data.image_download import fetch_images, images_needed, sampled_files
        from src.params import load_params
        params = load_params(args.params)
        needed, seed = images_needed(params), params.seed
    # The annotations first: they name the images a sampled download fetches.
    for name in sorted(names, key=lambda name: name != "annotations"):
        if needed.get(name, 0) > 0:
            captions = args.out / "annotations" / f"captions_{name}.json"
            if not captions.is_file():
                parser.error(f"{captions} is missing: add annotations to --what")
            fetch_images(sampled_files(captions, needed[name], seed, args.out, args.base_url),
                         args.connections)
        else:
            fetch_archive(ARCHIVES[name], args.out, args.base_url, args.keep_archives)
    logger.info("COCO 2017 %s ready in %s", ", ".join(names), args.out)


if __name__ == "__main__":
    main()
