"""COCO caption loading, subset selection and safe image paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from src.data.coco import (
    SchemaError,
    load_captions,
    load_image_categories,
    load_instances,
    resolve_image_path,
    select_images,
)


def _write(tmp_path: Path, payload: object) -> Path:
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(payload))
    return path


GOOD = {
    "images": [{"id": i, "file_name": f"{i:012d}.jpg", "width": 64, "height": 48}
               for i in range(1, 11)],
    "annotations": [{"id": 100 + i, "image_id": i, "caption": f"caption {i}"}
                    for i in range(1, 11)],
}


def test_load_captions_parses_and_groups(tmp_path: Path) -> None:
    captions = load_captions(_write(tmp_path, GOOD))
    assert len(captions.images) == 10
    assert captions.by_image()[3][0].caption == "caption 3"


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d.pop("annotations"), "missing field 'annotations'"),
    (lambda d: d["images"][2].pop("file_name"), r"images\[2\]: missing field 'file_name'"),
    (lambda d: d["images"][0].update(width="64"), r"images\[0\]: field 'width' must be int"),
    (lambda d: d["annotations"][4].update(image_id=999), r"annotations\[4\]: field 'image_id'"),
    (lambda d: d["annotations"][1].update(caption=None), r"annotations\[1\]: field 'caption'"),
])
def test_schema_errors_name_file_record_and_field(tmp_path: Path, mutate, message: str) -> None:
    payload = json.loads(json.dumps(GOOD))
    mutate(payload)
    path = _write(tmp_path, payload)
    with pytest.raises(SchemaError, match=message) as caught:
        load_captions(path)
    assert str(path) in str(caught.value)


def test_invalid_json_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(SchemaError, match=r"bad\.json: not valid JSON"):
        load_captions(path)


def test_selection_is_deterministic_sorted_and_nested(tmp_path: Path) -> None:
    captions = load_captions(_write(tmp_path, GOOD))
    small = [i.image_id for i in select_images(captions, 4, seed=1)]
    assert small == [i.image_id for i in select_images(captions, 4, seed=1)]
    assert small == sorted(small) and len(small) == 4
    larger = {i.image_id for i in select_images(captions, 7, seed=1)}
    assert set(small) <= larger
    assert small != [i.image_id for i in select_images(captions, 4, seed=2)]
    assert len(select_images(captions, 0, seed=1)) == 10


def test_resolve_image_path_refuses_escapes(tmp_path: Path) -> None:
    assert resolve_image_path(tmp_path, "train2017/./a.jpg") == tmp_path / "train2017" / "a.jpg"
    for bad in ("/etc/passwd", "../secret.jpg", "train2017/../../x.jpg", ""):
        with pytest.raises(ValueError):
            resolve_image_path(tmp_path, bad)


def test_image_categories_keep_crowds_and_every_category(tmp_path: Path) -> None:
    path = tmp_path / "instances.json"
    path.write_text(json.dumps({
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "dog"},
                       {"id": 3, "name": "cat"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [5, 5, 5, 5], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 9, 9], "iscrowd": 1}]}))
    names, present = load_image_categories(path)
    assert names == ("person", "dog", "cat")  # cat is in no image but is a category
    assert present == {1: {"dog"}, 2: {"person"}}  # the crowd of people shows people
    assert [i.image_id for i in load_instances(path)] == [1, 1]  # boxes leave crowds out
    bad = json.loads(path.read_text())
    bad["annotations"][0]["category_id"] = 9
    path.write_text(json.dumps(bad))
    with pytest.raises(SchemaError, match="category_id"):
        load_image_categories(path)
