"""src.eval.caption_gallery: marked spans of a prediction (CHAIR's hallucinated objects) are
drawn in red, on the right words, across a line wrap; nothing else is red."""

from __future__ import annotations

import numpy as np
from PIL import Image

from src.eval.caption_gallery import LINE_HEIGHT, PAD, THUMB_SIDE, GalleryRow, render_gallery

PREDICTION = "a small red triangle on a black background"


def _red_per_line(picture: Image.Image) -> list[int]:
    """Reddish pixels in each text line of the first row (title is line 0, prediction 1...)."""
    pixels = np.asarray(picture.convert("RGB")).astype(int)[:, THUMB_SIDE + 2 * PAD:]
    red = (pixels[..., 0] > 150) & (pixels[..., 1] < 90) & (pixels[..., 2] < 90)
    return [int(red[PAD + n * LINE_HEIGHT:PAD + (n + 1) * LINE_HEIGHT].sum()) for n in range(5)]


def _row(prediction: str, marked: list[tuple[int, int]]) -> GalleryRow:
    return GalleryRow(image=Image.new("RGB", (64, 48), (255, 255, 255)), title="image 1",
                      prediction=prediction, references=["a ref"], marked=marked)


def test_marked_words_are_red_and_nothing_else() -> None:
    plain = _red_per_line(render_gallery([_row(PREDICTION, [])]))
    assert plain == [0, 0, 0, 0, 0]
    start = PREDICTION.index("red triangle")
    marked = _red_per_line(render_gallery([_row(PREDICTION, [(start, start + 12)])]))
    assert marked[1] > 50 and marked[0] == marked[2] == 0
    shorter = _red_per_line(render_gallery([_row(PREDICTION, [(start + 4, start + 12)])]))
    assert 0 < shorter[1] < marked[1]  # "triangle" alone is less red than "red triangle"


def test_a_marked_word_after_a_line_wrap_is_red_on_the_next_line() -> None:
    prediction = "word " * 14 + "and a red circle"  # wraps after 64 characters
    start = prediction.index("red circle")
    red = _red_per_line(render_gallery([_row(prediction, [(start, start + 10)])]))
    assert red[1] == 0 and red[2] > 30
