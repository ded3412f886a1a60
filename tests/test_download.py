"""src.data.download against a local HTTP server with Range support (no network)."""

from __future__ import annotations

import hashlib
import io
import random
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from src.data import download as dl
from src.data.download import Archive, ChecksumError, download, fetch_archive

PAYLOAD = random.Random(0).randbytes(3 * dl.CHUNK_BYTES + 12_345)  # several chunks, ragged end


class FileServer(ThreadingHTTPServer):
    """Serves `files` by URL path; records each request's Range header."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)
        self.files: dict[str, bytes] = {}
        self.ranges: list[str | None] = []
        self.honour_range = True
        self.truncate_next_at: int | None = None  # close the next response after this many bytes

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class RangeHandler(BaseHTTPRequestHandler):
    server: FileServer

    def do_GET(self) -> None:
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        range_header = self.headers.get("Range")
        self.server.ranges.append(range_header)
        start = 0
        if range_header and self.server.honour_range:
            start = int(range_header.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        payload = body[start:]
        if self.server.truncate_next_at is not None:
            payload, self.server.truncate_next_at = payload[: self.server.truncate_next_at], None
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
