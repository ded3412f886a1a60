"""src.data.download against a local HTTP server with Range support (no network)."""

from __future__ import annotations

import hashlib
import io
import json
import random
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image

from src.data import download as dl
from src.data.coco import load_captions, select_images
from src.data.download import Archive, ChecksumError, download, extract, fetch_archive
from src.data.image_download import IncompleteImage, fetch_images, sampled_files

REPO = Path(__file__).resolve().parents[1]

PAYLOAD = random.Random(0).randbytes(3 * dl.CHUNK_BYTES + 12_345)  # several chunks, ragged end


class FileServer(ThreadingHTTPServer):
    """Serves `files` by URL path; records each request's Range header."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.paths: list[str] = []  # every GET, served or not
        self.honour_range = True
        self.truncate_next_at: int | None = None  # close the next response after this many bytes
        self.truncate: dict[str, int] = {}  # the same, for the next response of one path

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        range_header = self.headers.get("Range")
        self.server.ranges.append(range_header)
        start = 0
        if range_header and self.server.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.server.truncate_next_at is not None:
            payload, self.server.truncate_next_at = payload[: self.server.truncate_next_at], None
        if self.path in self.server.truncate:
            payload = payload[: self.server.truncate.pop(self.path)]
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def server() -> Iterator[FileServer]:
    file_server = FileServer()
    thread = threading.Thread(target=file_server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield file_server
    file_server.shutdown()
    file_server.server_close()
    thread.join()


def _serve(server: FileServer, url_path: str, body: bytes) -> Archive:
    server.files[f"/{url_path}"] = body
    return Archive(url_path, len(body), hashlib.md5(body).hexdigest())


def _download(server: FileServer, archive: Archive, dest_path: Path) -> None:
    download(
        f"{server.url}/{archive.url_path}",
        dest_path,
        size_bytes=archive.size_bytes,
        md5=archive.md5,
    )


def test_full_download_is_verified_and_renamed(server: FileServer, tmp_path: Path) -> None:
    archive = _serve(server, "zips/blob.zip", PAYLOAD)
    dest_path = tmp_path / "blob.zip"
    _download(server, archive, dest_path)
    assert dest_path.read_bytes() == PAYLOAD
    assert not (tmp_path / "blob.zip.part").exists()
    assert server.ranges == [None]

    _download(server, archive, dest_path)  # finished files are trusted, not fetched again
    assert server.ranges == [None]


def test_partial_file_resumes_with_a_range_request(server: FileServer, tmp_path: Path) -> None:
    archive = _serve(server, "zips/blob.zip", PAYLOAD)
    already = 1_500_000
    (tmp_path / "blob.zip.part").write_bytes(PAYLOAD[:already])
    _download(server, archive, tmp_path / "blob.zip")
    assert server.ranges == [f"bytes={already}-"]
    assert (tmp_path / "blob.zip").read_bytes() == PAYLOAD


def test_interrupted_transfer_keeps_its_part_and_resumes(
    server: FileServer, tmp_path: Path
) -> None:
    archive = _serve(server, "zips/blob.zip", PAYLOAD)
    server.truncate_next_at = 1_000_000
    with pytest.raises(RuntimeError, match="run again to resume"):
        _download(server, archive, tmp_path / "blob.zip")
    assert (tmp_path / "blob.zip.part").stat().st_size == 1_000_000
    assert not (tmp_path / "blob.zip").exists()

    _download(server, archive, tmp_path / "blob.zip")
    assert server.ranges == [None, "bytes=1000000-"]
    assert (tmp_path / "blob.zip").read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(
    server: FileServer, tmp_path: Path
) -> None:
    archive = _serve(server, "zips/blob.zip", PAYLOAD)
    server.honour_range = False
    (tmp_path / "blob.zip.part").write_bytes(b"x" * 1000)  # must be overwritten, not appended to
    _download(server, archive, tmp_path / "blob.zip")
    assert server.ranges == ["bytes=1000-"]
    assert (tmp_path / "blob.zip").read_bytes() == PAYLOAD


def test_checksum_mismatch_raises_and_leaves_nothing_finished_looking(
    server: FileServer, tmp_path: Path
) -> None:
    archive = _serve(server, "zips/blob.zip", PAYLOAD)
    wrong = Archive(archive.url_path, archive.size_bytes, "0" * 32)
    with pytest.raises(ChecksumError, match=f"expected {len(PAYLOAD)} bytes with MD5 0{{32}}"):
        _download(server, wrong, tmp_path / "blob.zip")
    assert list(tmp_path.iterdir()) == []


def _small_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("val2017/000000000139.jpg", b"not really a jpeg")
        archive.writestr("val2017/000000000285.jpg", b"nor this")
    return buffer.getvalue()


def test_fetch_archive_extracts_once(server: FileServer, tmp_path: Path) -> None:
    archive = _serve(server, "zips/val2017.zip", _small_zip())
    fetch_archive(archive, tmp_path, server.url)
    assert (tmp_path / "val2017" / "000000000139.jpg").read_bytes() == b"not really a jpeg"
    assert (tmp_path / "val2017" / "000000000285.jpg").read_bytes() == b"nor this"
    assert (tmp_path / ".val2017.zip.extracted").exists()
    assert not (tmp_path / "val2017.zip").exists()  # deleted once extracted

    (tmp_path / "val2017" / "000000000285.jpg").unlink()
    fetch_archive(archive, tmp_path, server.url)
    assert server.ranges == [None]  # nothing downloaded again
    assert not (tmp_path / "val2017" / "000000000285.jpg").exists()  # nor extracted again


def test_main_downloads_the_requested_archives(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _serve(server, "annotations/annotations_trainval2017.zip", _small_zip())
    monkeypatch.setattr(dl, "ARCHIVES", {"annotations": archive, "val2017": archive})
    dl.main(["--out", str(tmp_path), "--what", "annotations", "--base-url", server.url,
             "--keep-archives"])
    assert (tmp_path / "val2017" / "000000000139.jpg").exists()
    assert (tmp_path / "annotations_trainval2017.zip").exists()

    with pytest.raises(SystemExit):
        dl.main(["--out", str(tmp_path), "--what", "annotations,train2014"])


def test_resumed_extraction_writes_only_the_missing_members(tmp_path: Path) -> None:
    zip_path = tmp_path / "val2017.zip"
    zip_path.write_bytes(_small_zip())
    out = tmp_path / "coco"
    (out / "val2017").mkdir(parents=True)
    # As an interrupted run leaves them: one member whole, one cut short.
    whole = out / "val2017" / "000000000139.jpg"
    whole.write_bytes(b"X" * len(b"not really a jpeg"))  # full size: must be left alone
    (out / "val2017" / "000000000285.jpg").write_bytes(b"no")
    extract(zip_path, out)
    assert whole.read_bytes() == b"X" * len(b"not really a jpeg")
    assert (out / "val2017" / "000000000285.jpg").read_bytes() == b"nor this"
    assert (out / ".val2017.zip.extracted").read_text() == "2 members\n"


def _jpeg(seed: int) -> bytes:
    """A small noisy JPEG (a few kB, so a cut at 1,000 bytes leaves it truncated)."""
    pixels = random.Random(seed).randbytes(64 * 48 * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 48), pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _captions(path: Path, split: str, image_ids: list[int]) -> dict[str, bytes]:
    """A captions file naming `image_ids` with cocodataset.org URLs (never contacted: only
    their path is fetched, from the test server); returns {URL path: JPEG bytes}."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48,
               "coco_url": f"http://images.cocodataset.org/{split}/{i:012d}.jpg"}
              for i in image_ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": [
        {"id": 10 * i, "image_id": i, "caption": "A cat."} for i in image_ids]}))
    return {f"/{split}/{i:012d}.jpg": _jpeg(i) for i in image_ids}


def _image_server(server: FileServer, tmp_path: Path, count: int = 8) -> Path:
    captions = tmp_path / "coco" / "annotations" / "captions_train2017.json"
    server.files.update(_captions(captions, "train2017", list(range(1, count + 1))))
    return captions


def test_only_the_sampled_images_are_fetched_once(server: FileServer, tmp_path: Path) -> None:
    captions = _image_server(server, tmp_path)
    out = tmp_path / "coco"
    fetch_images(sampled_files(captions, 3, 0, out, server.url), connections=3)
    chosen = {i.file_name for i in select_images(load_captions(captions), 3, 0)}
    assert len(chosen) == 3
    assert {p.name for p in (out / "train2017").iterdir()} == chosen
    assert sorted(server.paths) == sorted(f"/train2017/{name}" for name in chosen)
    for name in chosen:
        assert (out / "train2017" / name).read_bytes() == server.files[f"/train2017/{name}"]

    fetch_images(sampled_files(captions, 3, 0, out, server.url))  # complete: checked, kept
    assert len(server.paths) == 3


def test_interrupted_image_resumes_with_a_range_request(server: FileServer,
                                                        tmp_path: Path) -> None:
    captions = _image_server(server, tmp_path, count=1)
    files = sampled_files(captions, 1, 0, tmp_path / "coco", server.url)
    server.truncate["/train2017/000000000001.jpg"] = 1000
    with pytest.raises(IncompleteImage, match=r"1 of 1 images failed.*run again to resume"):
        fetch_images(files)
    dest = tmp_path / "coco" / "train2017" / "000000000001.jpg"
    assert dest.with_name(dest.name + ".part").stat().st_size == 1000 and not dest.exists()

    fetch_images(files)
    assert server.ranges == [None, "bytes=1000-"]
    assert dest.read_bytes() == server.files["/train2017/000000000001.jpg"]
    assert not dest.with_name(dest.name + ".part").exists()


def test_complete_part_is_finished_without_fetching_it_again(server: FileServer,
                                                             tmp_path: Path) -> None:
    captions = _image_server(server, tmp_path, count=1)
    body = server.files["/train2017/000000000001.jpg"]
    dest = tmp_path / "coco" / "train2017" / "000000000001.jpg"
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(body)  # killed just before the rename
    fetch_images(sampled_files(captions, 1, 0, tmp_path / "coco", server.url))
    assert server.ranges == [f"bytes={len(body)}-"]  # answered 416: nothing left to send
    assert dest.read_bytes() == body


def test_corrupt_images_are_fetched_again(server: FileServer, tmp_path: Path) -> None:
    captions = _image_server(server, tmp_path, count=2)
    out = tmp_path / "coco"
    good = out / "train2017" / "000000000001.jpg"
    good.parent.mkdir(parents=True)
    good.write_bytes(server.files["/train2017/000000000001.jpg"][:1500])  # on disk, truncated
    server.files["/train2017/000000000002.jpg"] = b"<html>rate limited</html>"  # never decodes
    with pytest.raises(IncompleteImage, match="1 of 2 images failed"):
        fetch_images(sampled_files(captions, 2, 0, out, server.url), connections=1)
    assert good.read_bytes() == server.files["/train2017/000000000001.jpg"]
    assert server.paths.count("/train2017/000000000002.jpg") == 2  # tried afresh once more
    assert sorted(p.name for p in good.parent.iterdir()) == [good.name]  # no part left over


def test_make_coco_fetches_the_run_s_sample_not_the_zips(
    server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    annotations = tmp_path / "served" / "annotations"
    server.files.update(_captions(annotations / "captions_train2017.json", "train2017",
                                  list(range(1, 7))))
    server.files.update(_captions(annotations / "captions_val2017.json", "val2017",
                                  list(range(100, 105))))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in annotations.iterdir():
            archive.write(path, f"annotations/{path.name}")
    monkeypatch.setattr(dl, "ARCHIVES", {
        "train2017": Archive("zips/train2017.zip", 1, "0" * 32),  # never to be fetched
        "val2017": Archive("zips/val2017.zip", 1, "0" * 32),
        "annotations": _serve(server, "annotations/ann.zip", buffer.getvalue())})
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(max_images=4, seed=3)
    params["evaluate"]["num_examples"], params["train"]["val_examples"] = 2, 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    out = tmp_path / "coco"
    dl.main(["--out", str(out), "--base-url", server.url, "--params",
             str(tmp_path / "params.yaml")])
    assert not any(path.startswith("/zips/") for path in server.paths)
    for split, count in (("train2017", 4), ("val2017", 2)):  # val: the larger of 2 and 1
        chosen = select_images(load_captions(out / "annotations" / f"captions_{split}.json"),
                               count, 3)
        assert sorted(p.name for p in (out / split).iterdir()) == [i.file_name for i in chosen]
