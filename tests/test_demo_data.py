"""The synthetic demo dataset: COCO layout, loadable, deterministic, learnable captions."""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image
from pycocotools.coco import COCO

from src.demo.synthetic_coco import COLORS, SHAPES, caption_words, write_demo


def _digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sha.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return sha.hexdigest()


def test_byte_identical_for_same_seed(tmp_path: Path, demo_coco: Path) -> None:
    write_demo(tmp_path / "again", num_train=24, num_val=8, seed=0)
    assert _digest(tmp_path / "again") == _digest(demo_coco)
    write_demo(tmp_path / "other", num_train=24, num_val=8, seed=1)
    assert _digest(tmp_path / "other") != _digest(demo_coco)


def test_loads_with_pycocotools(demo_coco: Path) -> None:
    for split, count in (("train", 24), ("val", 8)):
        captions = COCO(str(demo_coco / f"annotations/captions_{split}2017.json"))
        instances = COCO(str(demo_coco / f"annotations/instances_{split}2017.json"))
        assert len(captions.getImgIds()) == count
        assert {c["name"] for c in instances.loadCats(instances.getCatIds())} == {
            f"{color} {kind}" for color in COLORS for kind in SHAPES}
        for image_id in captions.getImgIds():
            assert len(captions.getAnnIds(imgIds=image_id)) == 5
            info = captions.loadImgs(image_id)[0]
            with Image.open(demo_coco / f"{split}2017" / info["file_name"]) as image:
                assert image.size == (info["width"], info["height"])


def test_captions_name_what_is_drawn(demo_coco: Path) -> None:
    """Every box's category is the colour drawn in it and the shape captions name there;
    every caption names a true box's category, with its size."""
    captions = COCO(str(demo_coco / "annotations/captions_train2017.json"))
    instances = COCO(str(demo_coco / "annotations/instances_train2017.json"))
    vocabulary = set(caption_words())
    for image_id in captions.getImgIds():
        info = captions.loadImgs(image_id)[0]
        boxes = instances.loadAnns(instances.getAnnIds(imgIds=image_id))
        named = {f"{b['attributes']['size']} {instances.loadCats(b['category_id'])[0]['name']}"
                 for b in boxes}
        texts = [a["caption"].lower() for a in
                 captions.loadAnns(captions.getAnnIds(imgIds=image_id))]
        image = Image.open(demo_coco / "train2017" / info["file_name"]).convert("RGB")
        for box in boxes:
            x, y, w, h = box["bbox"]
            centre = image.getpixel((int(x + w / 2), int(y + h * 0.6)))
            drawn = min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], centre,
                                                                               strict=True)))
            assert instances.loadCats(box["category_id"])[0]["name"].split()[0] == drawn
        assert len({b["category_id"] for b in boxes}) == len(boxes)  # one box per category
        for text in texts:
            words = text.replace(".", " ").replace(",", " ").replace(":", " ").split()
            assert set(words) <= vocabulary
            assert any(phrase in " ".join(words) for phrase in named)
