"""Every bad-input case of the image reader becomes a counted skip with a reason."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from src.data.images import ImageDataset, ImageSkip, crop_box, load_rgb, read_image
from src.data.skips import Skip, SkipCounter


def _save(image: Image.Image, path: Path, fmt: str, **kwargs) -> Path:
    image.save(path, format=fmt, **kwargs)
    return path


@pytest.mark.parametrize(("mode", "fmt"), [
    ("1", "PNG"), ("L", "JPEG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"),
    ("CMYK", "JPEG"), ("I;16", "PNG"), ("RGB", "JPEG"),
])
def test_every_mode_loads_as_rgb(tmp_path: Path, mode: str, fmt: str) -> None:
    path = _save(Image.new(mode, (7, 5)), tmp_path / f"x.{fmt.lower()}", fmt)
    image = load_rgb(path)
    assert image.mode == "RGB"
    assert image.size == (7, 5)


def test_transparent_pixels_become_white_not_black(tmp_path: Path) -> None:
    path = _save(Image.new("RGBA", (4, 4), (255, 0, 0, 0)), tmp_path / "t.png", "PNG")
    assert load_rgb(path).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    array = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    path = _save(Image.fromarray(array), tmp_path / "g.png", "PNG")
    pixels = np.asarray(load_rgb(path))[..., 0]
    assert pixels.tolist() == [[0, 64], [128, 255]]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(image, tmp_path / "o.jpg", "JPEG", exif=exif)
    assert load_rgb(path).size == (20, 40)


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("missing.jpg", None, "missing"),
    ("empty.jpg", b"", "empty"),
    ("text.jpg", b"this is not an image at all", "not_an_image"),
    ("cut.jpg", _jpeg()[:300], "truncated"),
])
def test_bad_files_are_skips_with_reason(tmp_path: Path, name: str, content: bytes | None,
                                         reason: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageSkip) as caught:
        load_rgb(path)
    assert caught.value.reason == reason


def test_decompression_bomb_is_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.jpg"
    path.write_bytes(_jpeg((200, 200)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageSkip) as caught:
        load_rgb(path)
    assert caught.value.reason == "decompression_bomb"


def test_paths_outside_the_root_are_skips_never_opened(tmp_path: Path) -> None:
    root = tmp_path / "root" / "images"
    root.mkdir(parents=True)
    (tmp_path / "secret.jpg").write_bytes(_jpeg())  # a readable image just outside the root
    for relative in ("../../secret.jpg", str(tmp_path / "secret.jpg"), "a\\..\\..\\x.jpg"):
        skip = read_image(root, 7, relative)
        assert isinstance(skip, Skip)
        assert (skip.item, skip.reason, skip.path) == (7, "path_escape", relative)


def _first(batch: list) -> tuple:
    return batch[0]


def test_dataset_skips_travel_from_workers_and_count_by_reason(tmp_path: Path) -> None:
    (tmp_path / "good.jpg").write_bytes(_jpeg())
    (tmp_path / "empty.jpg").write_bytes(b"")
    items = [(1, "good.jpg"), (2, "missing.jpg"), (3, "empty.jpg"), (4, "../x.jpg"),
             (5, "gone.jpg")]
    loader = DataLoader(ImageDataset(items, tmp_path), batch_size=1, num_workers=2,
                        collate_fn=_first)
    counter, images = SkipCounter(), {}
    for item, loaded in loader:
        if isinstance(loaded, Skip):
            counter.add(loaded)
        else:
            images[item] = loaded.size
    assert images == {1: (64, 48)}
    assert counter.as_dict() == {"empty": [3], "missing": [2, 5], "path_escape": [4]}
    assert counter.summary() == "skipped 4 images (1 empty, 2 missing, 1 path_escape)"


def test_counters_merge_parts_and_the_one_process_gather() -> None:
    one = SkipCounter.of([Skip(3, "missing"), Skip(1, "truncated")])
    two = SkipCounter({"missing": [9]})
    merged = SkipCounter().update(one, two)
    assert merged.as_dict() == {"missing": [3, 9], "truncated": [1]}
    assert merged.counts() == {"missing": 2, "truncated": 1} and merged.total() == 3
    assert merged.gathered().as_dict() == merged.as_dict()
    assert SkipCounter().summary() == "skipped 0 images"


def test_crop_box_pads_and_clamps() -> None:
    image = Image.new("RGB", (100, 50))
    assert crop_box(image, (10, 10, 30, 20), pad_frac=0.5).size == (40, 20)
    assert crop_box(image, (-20, -5, 120, 70)).size == (100, 50)
    with pytest.raises(ValueError, match="no area"):
        crop_box(image, (120, 10, 130, 20))
