"""Detection helpers: box conversion and clamping, per-image canvases, batching by canvas."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from src.augment.grounding import ImageQueries, boxes_to_pixels, canvas_size, image_batches


def test_boxes_become_pixel_xyxy_clamped_to_the_image() -> None:
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4],  # inside
                          [0.05, 0.5, 0.2, 0.2],  # sticks out on the left
                          [0.9, 0.95, 0.4, 0.3],  # out on the right and bottom
                          [1.5, 0.5, 0.2, 0.2]])  # wholly outside: a zero-width box at the edge
    pixels = boxes_to_pixels(boxes, 200.0, 100.0)
    expected = torch.tensor([[80, 30, 120, 70], [0, 40, 30, 60], [140, 80, 200, 100],
                             [200, 40, 200, 60]], dtype=torch.float32)
    torch.testing.assert_close(pixels, expected)


def test_each_box_can_have_its_own_image_size() -> None:
    boxes = torch.tensor([[0.5, 0.5, 2.0, 2.0]] * 2)
    pixels = boxes_to_pixels(boxes, torch.tensor([10.0, 30.0]), torch.tensor([20.0, 5.0]))
    assert pixels.tolist() == [[0, 0, 10, 20], [0, 0, 30, 5]]


PROCESSOR = SimpleNamespace(size=SimpleNamespace(shortest_edge=800, longest_edge=1333))


def test_canvas_is_the_resized_size_rounded_up() -> None:
    assert canvas_size(PROCESSOR, 640, 480) == (800, 1088)  # resized 800 x 1066
    assert canvas_size(PROCESSOR, 480, 640) == (1088, 800)
    assert canvas_size(PROCESSOR, 640, 427) == (800, 1216)  # resized 800 x 1199
    assert canvas_size(PROCESSOR, 1000, 200) == (288, 1344)  # longest edge capped at 1333


def test_batches_hold_one_canvas_each() -> None:
    sizes = [(640, 480), (480, 640), (640, 480), (500, 375), (640, 427), (640, 480)]
    images = [ImageQueries(i, f"{i}.jpg", w, h, (), ()) for i, (w, h) in enumerate(sizes)]
    batches = image_batches(images, range(len(images)), 2, PROCESSOR)
    assert batches == [[0, 2], [3, 5], [4], [1]]  # canvases 800x1088 (x4), 800x1216, 1088x800
