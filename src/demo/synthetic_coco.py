"""Synthetic COCO-2017-layout dataset for the offline demo and the tests.

Each image holds 1-3 coloured shapes on a varied background; five captions
per image name the shapes with their colour, size and place, so a small
captioner can only score well by looking at the pixels.

    python -m src.demo.synthetic_coco --out data/demo/coco --num-train 400 --num-val 100 --seed 0
"""

from __future__ import annotations

import argparse
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from src.data.atomic import atomic_write_bytes

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 220, 30),
    "purple": (140, 40, 180),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (15, 15, 15),
    "beige": (225, 210, 180),
}
IMAGE_SIZES = ((320, 240), (240, 320), (288, 288), (352, 224), (256, 192))
# The horizontal third an object's centre falls in names its place.
PLACES = ("on the left", "in the middle", "on the right")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
# Ground truth: one category per (colour, kind), named as captions name it ("red circle"), so
# a phrase names a shape exactly; an image never holds two shapes of one category.
CATEGORY_IDS = {(color, kind): index + 1 for index, (color, kind) in
                enumerate((color, kind) for kind in SHAPES for color in COLORS)}

CAPTION_TEMPLATES_ONE = (
    "a {a} on a {bg} background.",
    "a picture of a {a}.",
    "there is a {a} {pa} of the image.",
    "a single {a} {pa}.",
    "one {a} against a {bg} background.",
)
CAPTION_TEMPLATES_MANY = (
    "a {a} and a {b}.",
    "{n} shapes on a {bg} background, a {a} and a {b}.",
    "a {a} to the {rel} of a {b}.",
    "a picture with a {a} {pa} and a {b} {pb}.",
    "there are {n} shapes: a {a} and a {b}.",
)


@dataclass(frozen=True)
class Shape:
    kind: str
    color: str
    size: str
    box_xyxy: tuple[int, int, int, int]
    image_width: int

    @property
    def place(self) -> str:
        return place_of(self.box_xyxy, self.image_width)

    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.kind}"


def place_of(box_xyxy: tuple[int, int, int, int], image_width: int) -> str:
    centre = (box_xyxy[0] + box_xyxy[2]) / 2
    return PLACES[min(2, int(3 * centre / image_width))]


def caption_words() -> tuple[str, ...]:
    """Every word a demo caption can contain (the tiny tokenizers' vocabulary core)."""
    words: set[str] = set()
    values = [*COLORS, *SHAPES, *SIZES, *BACKGROUNDS, *NUMBER_WORDS.values()]
    words.update(values)
    words.update(" ".join(PLACES).split())
    for template in CAPTION_TEMPLATES_ONE + CAPTION_TEMPLATES_MANY:
        for token in template.replace(".", " ").replace(",", " ").replace(":", " ").split():
            if "{" not in token:
                words.add(token)
    return tuple(sorted(words))


def _place_shapes(rng: random.Random, width: int, height: int, count: int) -> list[Shape]:
    """Non-overlapping shapes in distinct horizontal thirds, so places are unambiguous."""
    thirds = rng.sample(range(3), count)
    used: set[tuple[str, str]] = set()
    shapes = []
    for third in sorted(thirds):
        while True:
            kind, color = rng.choice(SHAPES), rng.choice(list(COLORS))
            if (kind, color) not in used:
                used.add((kind, color))
                break
        size = rng.choice(SIZES)
        side = int(width / 3 * (0.8 if size == "large" else 0.45))
        side = min(side, int(height * 0.8))
        cx = int(width / 3 * (third + 0.5)) + rng.randint(-width // 30, width // 30)
        cy = rng.randint(side // 2 + 2, height - side // 2 - 2)
        box = (cx - side // 2, cy - side // 2, cx - side // 2 + side, cy - side // 2 + side)
        shapes.append(Shape(kind, color, size, box, width))
    rng.shuffle(shapes)
    return shapes


def _draw(shapes: list[Shape], background: str, width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        x0, y0, x1, y1 = shape.box_xyxy
        fill = COLORS[shape.color]
        if shape.kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif shape.kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return image


def scene_captions(rng: random.Random, shapes: list[Shape], background: str) -> list[str]:
    """Five captions, each from a different template; multi-shape ones name two shapes."""
    if len(shapes) == 1:
        a = shapes[0]
        fields = {"a": a.phrase(), "pa": a.place, "bg": background}
        return [t.format(**fields) for t in CAPTION_TEMPLATES_ONE]
    captions = []
    for template in CAPTION_TEMPLATES_MANY:
        a, b = rng.sample(shapes, 2)
        rel = "left" if a.box_xyxy[0] < b.box_xyxy[0] else "right"
        fields = {
            "a": a.phrase(), "b": b.phrase(), "pa": a.place, "pb": b.place,
            "rel": rel, "bg": background, "n": NUMBER_WORDS[len(shapes)],
        }
        captions.append(template.format(**fields))
    return captions


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    shapes: list[Shape]
    background: str


def random_scene(rng: random.Random, size: tuple[int, int] | None = None) -> Scene:
    """One demo picture: a size from IMAGE_SIZES (unless given), a background, 1-3 shapes."""
    width, height = size or rng.choice(IMAGE_SIZES)
    background = rng.choice(list(BACKGROUNDS))
    shapes = _place_shapes(rng, width, height, rng.choice((1, 1, 2, 2, 3)))
    return Scene(_draw(shapes, background, width, height), shapes, background)


def jpeg_bytes(image: Image.Image) -> bytes:
    """The picture as the demo writes it to disk (JPEG quality 90)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_split(out_dir: Path, split: str, num_images: int, seed: int, first_id: int) -> None:
    """Write `{split}2017/*.jpg` and its captions/instances JSON (COCO 2017 schema).

    Instances carry every shape's box with its (colour, kind) category and its size as
    `attributes.size`: the ground truth that grounding and region captions are measured on.
    """
    rng = random.Random(f"{seed}-{split}")
    image_dir = out_dir / f"{split}2017"
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": category_id, "name": name, "supercategory": kind}
                  for (color, kind), category_id in CATEGORY_IDS.items()
                  for name in [f"{color} {kind}"]]
    images, captions, instances = [], [], []
    for index in range(num_images):
        image_id = first_id + index
        scene = random_scene(rng)
        (width, height), background, shapes = scene.image.size, scene.background, scene.shapes
        file_name = f"{image_id:012d}.jpg"
        atomic_write_bytes(image_dir / file_name, jpeg_bytes(scene.image))
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "license": 0})
        for text in scene_captions(rng, shapes, background):
            captions.append({"id": len(captions) + 1 + first_id * 10, "image_id": image_id,
                             "caption": text[0].upper() + text[1:]})
        for shape in shapes:
            x0, y0, x1, y1 = shape.box_xyxy
            instances.append({
                "id": len(instances) + 1 + first_id * 10, "image_id": image_id,
                "category_id": CATEGORY_IDS[shape.color, shape.kind],
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                "segmentation": [], "attributes": {"size": shape.size},
            })
    info = {"description": f"grounded-coco demo ({split}, seed {seed})", "version": "1.0"}
    licenses = [{"id": 0, "name": "CC0 (synthetic)", "url": ""}]
    ann_dir = out_dir / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    for name, payload in (
        (f"captions_{split}2017.json",
         {"info": info, "licenses": licenses, "images": images, "annotations": captions}),
        (f"instances_{split}2017.json",
         {"info": info, "licenses": licenses, "images": images, "annotations": instances,
          "categories": categories}),
    ):
        atomic_write_bytes(ann_dir / name, json.dumps(payload, sort_keys=True).encode())


def write_demo(out_dir: Path, num_train: int, num_val: int, seed: int) -> None:
    write_split(out_dir, "train", num_train, seed, first_id=1)
    write_split(out_dir, "val", num_val, seed, first_id=1_000_000)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write_demo(args.out, args.num_train, args.num_val, args.seed)
    print(f"wrote demo COCO ({args.num_train} train, {args.num_val} val images) to {args.out}")


if __name__ == "__main__":
    main()
