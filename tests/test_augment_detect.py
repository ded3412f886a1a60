"""Detection helpers: box conversion and clamping, per-image canvases, batching by canvas
(within a shard and across a process's shards)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from src.augment.grounding import (
    ImageQueries,
    boxes_to_pixels,
    canvas_batches,
    canvas_size,
    image_batches,
)


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


def test_batches_fill_across_shards_and_wait_at_most_lag_shards() -> None:
    # L = 640x480 (canvas 800x1088), P = 480x640 (1088x800), W = 640x427 (800x1216).
    sizes = [(640, 480), (480, 640), (640, 480), (640, 427),  # shard 0: L P L W
             (480, 640), (640, 480),  # shard 1: P L
             (640, 480), (640, 427),  # shard 2: L W
             (640, 480)]  # shard 3: L
    images = [ImageQueries(i, f"{i}.jpg", w, h, (), ()) for i, (w, h) in enumerate(sizes)]
    shards = [[3, 2, 1, 0], [4, 5], [6, 7], [8]]  # each shard's images run by image id
    # lag 1: W 3 waits one shard and goes alone; L 5 waits for L 6 of the next shard;
    # at the end the partial batches go in canvas order.
    assert canvas_batches(images, shards, 2, PROCESSOR, lag=1) == [
        [0, 2], [1, 4], [3], [5, 6], [8], [7]]
    # lag 0: no image waits: the batches of each shard alone.
    assert canvas_batches(images, shards, 2, PROCESSOR, lag=0) == [
        batch for shard in shards for batch in image_batches(images, shard, 2, PROCESSOR)]
    assert len(canvas_batches(images, shards, 2, PROCESSOR, lag=0)) == 8
