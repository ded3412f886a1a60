"""COCO 2017 annotations (captions, instance boxes): validated loading, subsets, safe paths."""

from __future__ import annotations

import json
import os
import random
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


def load_instances(path: Path) -> list[CocoInstance]:
    """Parse an `instances_*.json` into boxes named by category; crowd boxes are left out
    (they cover a group, as COCO's own evaluation treats them). Schema errors name the
    file, the record and the field."""
    path = Path(path)
    payload = _read_json(path)
    categories = _categories(payload, path)
    instances = []
    for index, record in enumerate(_field(payload, "annotations", list, str(path))):
        where = f"{path}: annotations[{index}]"
        category_id = _category_id(record, categories, where)
        bbox = _field(record, "bbox", list, where)
        if len(bbox) != 4 or not all(isinstance(v, int | float) for v in bbox):
            raise SchemaError(f"{where}: field 'bbox' must be [x, y, width, height], got {bbox!r}")
        if record.get("iscrowd", 0):
            continue
        x, y, width, height = (float(v) for v in bbox)
        size = record.get("attributes", {}).get("size")
        instances.append(CocoInstance(_field(record, "image_id", int, where),
                                      categories[category_id], (x, y, x + width, y + height),
                                      size))
    return instances


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
