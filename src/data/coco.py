"""COCO 2017 annotations (captions, instance boxes): validated loading, subsets, safe paths."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path


class SchemaError(ValueError):
    """An annotation file does not have the COCO schema; the message names file and field."""


@dataclass(frozen=True)
class CocoImage:
    image_id: int
    file_name: str
    width: int
    height: int
    coco_url: str = ""  # where cocodataset.org serves it; "" when the record has none


@dataclass(frozen=True)
class CocoCaption:
    caption_id: int
    image_id: int
    caption: str


@dataclass(frozen=True)
class CaptionSet:
    images: dict[int, CocoImage]
    captions: list[CocoCaption]

    def by_image(self) -> dict[int, list[CocoCaption]]:
        grouped: dict[int, list[CocoCaption]] = {image_id: [] for image_id in self.images}
        for caption in self.captions:
            grouped[caption.image_id].append(caption)
        return grouped


def _field(record: object, key: str, kind: type | tuple[type, ...], where: str) -> object:
    if not isinstance(record, dict):
        raise SchemaError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise SchemaError(f"{where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SchemaError(f"{where}: field '{key}' must be {expected}, got {value!r}")
    return value


def _read_json(path: Path) -> object:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SchemaError(f"{path}: not valid JSON ({error})") from error


def load_captions(path: Path) -> CaptionSet:
    """Parse a `captions_*.json`; every schema problem names the file, the record and the field."""
    path = Path(path)
    payload = _read_json(path)
    images_raw = _field(payload, "images", list, str(path))
    annotations_raw = _field(payload, "annotations", list, str(path))
    images: dict[int, CocoImage] = {}
    for index, record in enumerate(images_raw):
        where = f"{path}: images[{index}]"
        image = CocoImage(
            image_id=_field(record, "id", int, where),
            file_name=_field(record, "file_name", str, where),
            width=_field(record, "width", int, where),
            height=_field(record, "height", int, where),
            coco_url=str(record.get("coco_url", "")),
        )
        if image.image_id in images:
            raise SchemaError(f"{where}: duplicate image id {image.image_id}")
        images[image.image_id] = image
    captions = []
    for index, record in enumerate(annotations_raw):
        where = f"{path}: annotations[{index}]"
        caption = CocoCaption(
            caption_id=_field(record, "id", int, where),
            image_id=_field(record, "image_id", int, where),
            caption=_field(record, "caption", str, where),
        )
        if caption.image_id not in images:
            raise SchemaError(f"{where}: field 'image_id' {caption.image_id} is not in 'images'")
        captions.append(caption)
    return CaptionSet(images=images, captions=captions)


@dataclass(frozen=True)
class CocoInstance:
    image_id: int
    category: str
    box_xyxy: tuple[float, float, float, float]  # pixels of the original image
    size: str | None = None  # the demo's `attributes.size` ("small", "large"); COCO has none


def _categories(payload: object, path: Path) -> dict[int, str]:
    categories = {}
    for index, record in enumerate(_field(payload, "categories", list, str(path))):
        where = f"{path}: categories[{index}]"
        categories[_field(record, "id", int, where)] = _field(record, "name", str, where)
    return categories


def _category_id(record: object, categories: dict[int, str], where: str) -> int:
    category_id = _field(record, "category_id", int, where)
    if category_id not in categories:
        raise SchemaError(f"{where}: field 'category_id' {category_id} is not in 'categories'")
    return category_id


def load_image_categories(path: Path) -> tuple[tuple[str, ...], dict[int, frozenset[str]]]:
    """Every category name of an `instances_*.json`, and per image the names of the categories
    it holds, crowd annotations included (a crowd of people shows people)."""
    path = Path(path)
    payload = _read_json(path)
    categories = _categories(payload, path)
    present: dict[int, set[str]] = {}
    for index, record in enumerate(_field(payload, "annotations", list, str(path))):
        where = f"{path}: annotations[{index}]"
        name = categories[_category_id(record, categories, where)]
        present.setdefault(_field(record, "image_id", int, where), set()).add(name)
    return (tuple(categories.values()),
            {image_id: frozenset(names) for image_id, names in present.items()})


READ_CHUNK = 1 << 24  # characters read at a time by the streaming reader


class _JsonStream:
    """The members of a JSON file's top-level object, one array element at a time.

    `instances_train2017.json` is 0.45 GB of text and 2.6 GB as Python objects, mostly
    segmentation polygons; read this way, only the element at hand and what the caller
    keeps are ever in memory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed by members()
        self.text, self.position, self.eof = "", 0, False
        self.decoder = json.JSONDecoder()

    def _error(self, detail: str) -> SchemaError:
        return SchemaError(f"{self.path}: not valid JSON ({detail} at character "
                           f"{self.position} of the buffer)")

    def _more(self) -> None:
        chunk = self.handle.read(max(READ_CHUNK, len(self.text) - self.position))
        self.text = self.text[self.position:] + chunk
        self.position, self.eof = 0, not chunk

    def _peek(self) -> str:
        """The next non-whitespace character ("" at the end of the file)."""
        while True:
            while self.position < len(self.text) and self.text[self.position] in " \t\n\r":
                self.position += 1
            if self.position < len(self.text) or self.eof:
                return self.text[self.position:self.position + 1]
            self._more()

    def _expect(self, characters: str) -> str:
        found = self._peek()
        if not found or found not in characters:
            raise self._error(f"expected one of {characters!r}, got {found!r}")
        self.position += 1
        return found

    def _value(self) -> object:
        self._peek()
        while True:
            try:
                value, end = self.decoder.raw_decode(self.text, self.position)
            except json.JSONDecodeError as error:
                if self.eof:
                    raise self._error(error.msg) from error
            else:  # a number cut at the buffer's end parses too: only trust a later character
                if end < len(self.text) or self.eof:
                    self.position = end
                    return value
            self._more()

    def members(self) -> Iterator[tuple[str, int | None, object]]:
        """(key, index, element) for each element of an array member, (key, None, value)
        for any other member."""
        with self.handle:
            if self._peek() != "{":
                raise SchemaError(f"{self.path}: expected an object, got {self._peek()!r}")
            self._expect("{")
            if self._peek() == "}":
                return
            while True:
                key = self._value()
                self._expect(":")
                if self._peek() == "[":
                    self._expect("[")
                    if self._peek() != "]":
                        index = 0
                        while True:
                            yield key, index, self._value()
                            index += 1
                            if self._expect(",]") == "]":
                                break
                    else:
                        self._expect("]")
                else:
                    yield key, None, self._value()
                if self._expect(",}") == "}":
                    return


def _instance(record: object, where: str) -> tuple[int, int, tuple[float, ...], object] | None:
    """(image id, category id, xyxy box, record) of an annotation; None for a crowd box."""
    category_id = _field(record, "category_id", int, where)
    bbox = _field(record, "bbox", list, where)
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
        raise SchemaError(f"{where}: field 'bbox' must be [x, y, width, height], got {bbox!r}")
    if record.get("iscrowd", 0):
        return None
    x, y, width, height = (float(v) for v in bbox)
    return (_field(record, "image_id", int, where), category_id,
            (x, y, x + width, y + height), record)


def load_instances(path: Path, image_ids: Collection[int] | None = None) -> list[CocoInstance]:
    """Parse an `instances_*.json` into boxes named by category, in file order; crowd boxes
    are left out (they cover a group, as COCO's own evaluation treats them). Schema errors
    name the file, the record and the field.

    The file is streamed (see `_JsonStream`), and only the boxes of `image_ids` (all
    images when None) are kept: a 5k-image run reads COCO train's file in bounded memory.
    Every annotation is still checked. COCO writes `categories` last, so an unknown
    `category_id` is reported once the file is read.
    """
    path = Path(path)
    wanted = None if image_ids is None else set(image_ids)
    categories: dict[int, str] = {}
    found: set[str] = set()
    kept, first_use = [], {}  # category id -> the first annotation index using it
    for key, index, record in _JsonStream(path).members():
        found.add(key)
        if key == "categories" and index is not None:
            where = f"{path}: categories[{index}]"
            categories[_field(record, "id", int, where)] = _field(record, "name", str, where)
        elif key == "annotations" and index is not None:
            where = f"{path}: annotations[{index}]"
            instance = _instance(record, where)
            if instance is None:
                first_use.setdefault(_field(record, "category_id", int, where), index)
                continue
            image_id, category_id, box, record = instance
            first_use.setdefault(category_id, index)
            if wanted is None or image_id in wanted:
                size = record.get("attributes", {}).get("size")
                kept.append((image_id, category_id, box, size))
        elif key in ("categories", "annotations") and index is None:
            _field({key: record}, key, list, str(path))
    for key in ("categories", "annotations"):
        if key not in found:
            raise SchemaError(f"{path}: missing field '{key}'")
    unknown = [(i, c) for c, i in first_use.items() if c not in categories]
    if unknown:
        index, category_id = min(unknown)
        raise SchemaError(f"{path}: annotations[{index}]: field 'category_id' {category_id} "
                          "is not in 'categories'")
    return [CocoInstance(image_id, categories[category_id], box, size)
            for image_id, category_id, box, size in kept]


def select_images(captions: CaptionSet, max_images: int | None, seed: int) -> list[CocoImage]:
    """A seeded random subset of the captioned images, returned in image-id order.

    The same (file, max_images, seed) always gives the same subset, and a
    larger max_images gives a superset, so growing a run reuses earlier work.
    """
    captioned = sorted({c.image_id for c in captions.captions})
    order = list(captioned)
    random.Random(seed).shuffle(order)
    chosen = order if max_images is None or max_images <= 0 else order[:max_images]
    return [captions.images[i] for i in sorted(chosen)]


def resolve_image_path(image_root: Path, relative: str) -> Path:
    """Join `relative` onto `image_root`, refusing absolute paths and `..` escapes.

    The check is lexical, so a user's symlinked `train2017/` keeps working.
    """
    if not relative or Path(relative).is_absolute() or "\\" in relative:
        raise ValueError(f"image path {relative!r} must be relative to the image root")
    normal = os.path.normpath(relative)
    if normal == ".." or normal.startswith(".." + os.sep):
        raise ValueError(f"image path {relative!r} escapes the image root {image_root}")
    return Path(image_root) / normal


def path_inside(image_root: Path, relative: str) -> Path | None:
    """`resolve_image_path`, or None where `relative` would leave the root (never looked at)."""
    try:
        return resolve_image_path(image_root, relative)
    except ValueError:
        return None
