"""src.eval.intervals: hand-computed resamples and intervals, paired differences that see a
planted difference and call an equal pair not distinguishable."""

from __future__ import annotations

import numpy as np
import pytest

from src.eval.intervals import (
    Difference,
    bootstrap_indices,
    mean_ci,
    paired_difference,
    paired_ratio_difference,
    percentile_interval,
    ratio_ci,
    resampled_totals,
)


def test_indices_are_seeded_shaped_and_in_range() -> None:
    first = bootstrap_indices(7, 50, seed=3)
    assert first.shape == (50, 7)
    assert first.min() >= 0 and first.max() <= 6
    assert np.array_equal(first, bootstrap_indices(7, 50, seed=3))
    assert not np.array_equal(first, bootstrap_indices(7, 50, seed=4))
    with pytest.raises(ValueError):
        bootstrap_indices(0, 10, seed=0)


def test_totals_over_fixed_indices_by_hand() -> None:
    values = np.array([1.0, 2.0, 10.0])
    indices = np.array([[0, 0, 0], [0, 1, 2], [2, 2, 1]])
    # 1+1+1, 1+2+10, 10+10+2
    assert resampled_totals(values, indices).tolist() == [3.0, 13.0, 22.0]
    counts = np.array([[1.0, 2.0], [0.0, 2.0], [3.0, 1.0]])
    assert resampled_totals(counts, indices).tolist() == [[3.0, 6.0], [4.0, 5.0], [6.0, 4.0]]


def test_percentile_interval_by_hand() -> None:
    # 0..100: the 5th and 95th percentiles are 5 and 95; at 50 % the 25th and 75th
    assert percentile_interval(np.arange(101.0), level=0.90) == pytest.approx((5.0, 95.0))
    assert percentile_interval(np.arange(101.0), level=0.50) == pytest.approx((25.0, 75.0))
    # linear interpolation: the 2.5th percentile of [0, 10] lies at 0.25
    assert percentile_interval(np.array([0.0, 10.0]), level=0.95) == pytest.approx((0.25, 9.75))


def test_mean_ci_on_two_images_by_hand() -> None:
    # A draw of two images from [0, 1] has mean 0 (p 1/4), 0.5 (p 1/2) or 1 (p 1/4):
    # the 2.5th percentile is 0, the 97.5th is 1, and the 30th and 70th are both 0.5.
    values = np.array([0.0, 1.0])
    assert mean_ci(values, seed=0) == (0.0, 1.0)
    assert mean_ci(values, seed=0, level=0.40) == (0.5, 0.5)
    assert mean_ci(np.full(5, 0.7)) == pytest.approx((0.7, 0.7))


def test_mean_ci_is_the_percentiles_of_the_resampled_means() -> None:
    values = np.random.default_rng(1).normal(size=40)
    expected = np.percentile(values[bootstrap_indices(40, 300, seed=9)].mean(axis=1),
                             [2.5, 97.5])
    assert mean_ci(values, num_resamples=300, seed=9) == pytest.approx(tuple(expected),
                                                                       rel=1e-12)


def test_mean_ci_width_matches_the_standard_error() -> None:
    values = np.random.default_rng(0).normal(loc=2.0, scale=1.0, size=400)
    low, high = mean_ci(values, num_resamples=4000, seed=1)
    assert low < values.mean() < high
    # normal theory: 2 * 1.96 * sd / sqrt(n) = 0.196
    assert high - low == pytest.approx(2 * 1.96 * values.std() / 20, rel=0.1)


def test_ratio_ci_recomputes_the_ratio_of_totals_by_hand() -> None:
    # image 0: 1 of 2 mentions hallucinated, image 1: 0 of 2. Draws: {0,0} -> 2/4,
    # {0,1} -> 1/4, {1,1} -> 0/4 with p 1/4, 1/2, 1/4: interval (0, 0.5).
    assert ratio_ci(np.array([1.0, 0.0]), np.array([2.0, 2.0])) == (0.0, 0.5)
    # Unequal mentions: image 0 has 1 of 1 hallucinated, image 1 has 0 of 3. Draws give
    # 2/2, 1/4, 0/6 with p 1/4, 1/2, 1/4, so the 30th and 70th percentiles are both 1/4
    # (the mean of per-image ratios, 1/2, would be wrong).
    assert ratio_ci(np.array([1.0, 0.0]), np.array([1.0, 3.0]), level=0.40) == (0.25, 0.25)
    # no mentions at all: CHAIR_i is 0, not a division by zero
    assert ratio_ci(np.zeros(3), np.zeros(3)) == (0.0, 0.0)


def test_verdicts() -> None:
    assert Difference(0.3, 0.1, 0.5).verdict == "higher"
    assert Difference(-0.3, -0.5, -0.1).verdict == "lower"
    assert Difference(0.1, -0.1, 0.3).verdict == "not distinguishable"
    assert Difference(0.1, 0.0, 0.3).verdict == "not distinguishable"  # touching 0 is not apart
    assert Difference(0.3, 0.1, 0.5).distinguishable
    assert not Difference(0.0, 0.0, 0.0).distinguishable


def test_a_planted_difference_is_detected_and_an_equal_pair_is_not() -> None:
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 0.5, size=200)  # per-image CIDEr-like: skewed, sd ~0.7
    better = base + 0.05 + rng.normal(scale=0.05, size=200)
    difference = paired_difference(better, base)
    assert difference.verdict == "higher"
    assert difference.low < difference.mean < difference.high
    assert difference.mean == pytest.approx(better.mean() - base.mean())
    assert paired_difference(base, better).verdict == "lower"
    # pairing is what makes it visible: the two unpaired intervals overlap
    assert mean_ci(better)[0] < mean_ci(base)[1]

    same = paired_difference(base, base.copy())
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.verdict == "not distinguishable"
    other_draw = rng.gamma(2.0, 0.5, size=200)  # same distribution, different images' noise
    assert paired_difference(other_draw, base).verdict == "not distinguishable"


def test_paired_ratio_difference() -> None:
    mentions = np.full(100, 3.0)
    fewer = np.r_[np.ones(20), np.zeros(80)]  # 20 of 300 mentions hallucinated
    more = np.r_[np.ones(50), np.zeros(50)]  # 50 of 300
    difference = paired_ratio_difference(fewer, mentions, more, mentions)
    assert difference.mean == pytest.approx(20 / 300 - 50 / 300)
    assert difference.verdict == "lower"
    assert paired_ratio_difference(more, mentions, more, mentions).verdict == (
        "not distinguishable")


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        mean_ci(np.array([]))
    with pytest.raises(ValueError):
        mean_ci(np.array([1.0, float("nan")]))
    with pytest.raises(ValueError):
        paired_difference(np.ones(3), np.ones(4))
    with pytest.raises(ValueError):
        percentile_interval(np.ones(3), level=1.0)
