"""Bootstrap intervals over images: how far a score moves when the val images are redrawn.

One resampling serves every statistic: `bootstrap_indices(n, R, seed)` draws R index rows
over n images, so two runs scored on the same images, in the same order, with the same seed
see the same draws and their paired difference cancels what the images share. Intervals are
percentile intervals (the 2.5th and 97.5th percentile of the resampled statistic at 95 %).

Statistics that are a mean over images (CIDEr-D, CHAIR_s) resample per-image values; ratios
of totals (CHAIR_i, corpus BLEU) resample per-image counts and recompute the ratio per draw
(`resampled_totals`), never average per-image ratios.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

NUM_RESAMPLES = 2000
# Fixed, not params.seed: two evaluations of the same images must see the same draws.
BOOTSTRAP_SEED = 0
LEVEL = 0.95
_CHUNK_ELEMENTS = 4_000_000  # resampled values held at once (~32 MB of float64)


def bootstrap_indices(num_items: int, num_resamples: int, seed: int) -> np.ndarray:
    """[num_resamples, num_items] indices drawn with replacement, the same for the same args."""
    if num_items < 1 or num_resamples < 1:
        raise ValueError(f"need at least one item and one resample, got {num_items}, "
                         f"{num_resamples}")
    return np.random.default_rng(seed).integers(0, num_items, size=(num_resamples, num_items))


def resampled_totals(values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Per draw, the sum over the drawn rows of `values` ([n] or [n, k]) -> [R] or [R, k].

    Summed in chunks of draws, so 2,000 draws over 5,000 images never hold every draw at once.
    """
    values = np.asarray(values, dtype=np.float64)
    if indices.ndim != 2 or (indices.size and indices.max() >= len(values)):
        raise ValueError(f"indices {indices.shape} do not index {len(values)} items")
    row_size = indices.shape[1] * int(np.prod(values.shape[1:], dtype=np.int64))
    step = max(1, _CHUNK_ELEMENTS // max(row_size, 1))
    return np.concatenate([values[indices[start:start + step]].sum(axis=1)
                           for start in range(0, len(indices), step)])


def percentile_interval(statistics: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` percentile interval of resampled statistics (linear interpolation)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(np.asarray(statistics, dtype=np.float64), [tail, 100.0 - tail])
    return float(low), float(high)


def format_interval(metrics: Mapping[str, object], key: str) -> str:
    """" [low, high]" of `key`'s `{key}_ci95` in `metrics`, or "" where it has none."""
    interval = metrics.get(f"{key}_ci95")
    return f" [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else ""


def _per_image(values: np.ndarray, name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0 or not np.isfinite(array).all():
        raise ValueError(f"{name} must be a non-empty 1-D array of finite numbers")
    return array


def mean_ci(values: np.ndarray, *, num_resamples: int = NUM_RESAMPLES, seed: int = 0,
            level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of per-image `values` over images."""
    values = _per_image(values)
    indices = bootstrap_indices(len(values), num_resamples, seed)
    return percentile_interval(resampled_totals(values, indices) / len(values), level)


def ratio_of_totals(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray | float:
    """sum(numerators) / sum(denominators) along the last axis; 0 where nothing was counted."""
    numerators = np.asarray(numerators, dtype=np.float64)
    denominators = np.asarray(denominators, dtype=np.float64)
    ratio = np.divide(numerators, denominators, out=np.zeros_like(numerators),
                      where=denominators > 0)
    return float(ratio) if ratio.ndim == 0 else ratio


def ratio_ci(numerators: np.ndarray, denominators: np.ndarray, *,
             num_resamples: int = NUM_RESAMPLES, seed: int = 0,
             level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of sum(numerators) / sum(denominators) over images (CHAIR_i:
    hallucinated mentions / mentions), the ratio recomputed for every draw."""
    numerators = _per_image(numerators, "numerators")
    denominators = _per_image(denominators, "denominators")
    if len(numerators) != len(denominators):
        raise ValueError("numerators and denominators must cover the same images")
    indices = bootstrap_indices(len(numerators), num_resamples, seed)
    totals = resampled_totals(np.stack([numerators, denominators], axis=1), indices)
    return percentile_interval(ratio_of_totals(totals[:, 0], totals[:, 1]), level)


@dataclass(frozen=True)
class Difference:
    """a - b: the point estimate and its percentile interval."""

    mean: float
    low: float
    high: float

    @property
    def distinguishable(self) -> bool:
        """The interval excludes 0: the images alone would rarely produce this difference."""
        return self.low > 0.0 or self.high < 0.0

    @property
    def verdict(self) -> str:
        """"higher" / "lower" (a against b) where distinguishable, else "not distinguishable"."""
        if self.low > 0.0:
            return "higher"
        if self.high < 0.0:
            return "lower"
        return "not distinguishable"


def paired_difference(a: np.ndarray, b: np.ndarray, *, num_resamples: int = NUM_RESAMPLES,
                      seed: int = 0, level: float = LEVEL) -> Difference:
    """mean(a) - mean(b) with a paired interval: both drawn with the same indices.

    `a` and `b` are per-image values over the same images in the same order.
    """
    a, b = _per_image(a, "a"), _per_image(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a paired difference needs the same images: {len(a)} != {len(b)}")
    differences = a - b
    indices = bootstrap_indices(len(differences), num_resamples, seed)
    low, high = percentile_interval(resampled_totals(differences, indices) / len(a), level)
    return Difference(mean=float(a.mean() - b.mean()), low=low, high=high)


def paired_ratio_difference(numerators_a: np.ndarray, denominators_a: np.ndarray,
                            numerators_b: np.ndarray, denominators_b: np.ndarray, *,
                            num_resamples: int = NUM_RESAMPLES, seed: int = 0,
                            level: float = LEVEL) -> Difference:
    """Ratio-of-totals a minus ratio-of-totals b (CHAIR_i of two runs), paired over images."""
    columns = [_per_image(column, name) for column, name in (
        (numerators_a, "numerators_a"), (denominators_a, "denominators_a"),
        (numerators_b, "numerators_b"), (denominators_b, "denominators_b"))]
    if len({len(column) for column in columns}) != 1:
        raise ValueError("a paired difference needs the same images in every column")
    stacked = np.stack(columns, axis=1)
    indices = bootstrap_indices(len(stacked), num_resamples, seed)
    totals = resampled_totals(stacked, indices)
    draws = ratio_of_totals(totals[:, 0], totals[:, 1]) - ratio_of_totals(totals[:, 2],
                                                                          totals[:, 3])
    low, high = percentile_interval(draws, level)
    point = (ratio_of_totals(columns[0].sum(), columns[1].sum())
             - ratio_of_totals(columns[2].sum(), columns[3].sum()))
    return Difference(mean=float(point), low=low, high=high)
