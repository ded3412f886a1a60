"""Box conventions shared by every package: pixel xyxy columns and their IoU.

Candidate tables (detect, clip_score, assemble, the ground-truth measures and the demo's
held-out checks) hold a box as the four pixel columns of BOX_COLUMNS, x0 <= x1, y0 <= y1.
"""

from __future__ import annotations

import numpy as np

BOX_COLUMNS = ["box_x0", "box_y0", "box_x1", "box_y1"]


def box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of each xyxy row of `boxes` (n, 4) with each row of `others` (m, 4): (n, m)."""
    return paired_box_iou(boxes[:, None, :], others[None, :, :])


def paired_box_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes row by row: (..., 4) with (..., 4), broadcast, -> (...)."""
    top_left = np.maximum(boxes[..., :2], others[..., :2])
    bottom_right = np.minimum(boxes[..., 2:], others[..., 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(axis=-1)
    areas = (boxes[..., 2:] - boxes[..., :2]).prod(axis=-1)
    other_areas = (others[..., 2:] - others[..., :2]).prod(axis=-1)
    union = areas + other_areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
