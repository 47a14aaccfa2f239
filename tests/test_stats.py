import math

import pytest

from maet.stats import mean_interval, paired_difference, wilson


def test_wilson_interval_on_known_values():
    low, high = wilson(8, 10)  # textbook value: 0.490 .. 0.943
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0


def test_mean_interval_over_seeds_is_a_t_interval():
    mean, low, high = mean_interval([0.2, 0.4, 0.6], n_items=100)
    half = 4.302653 * 0.2 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert mean == pytest.approx(0.4) and low == pytest.approx(max(0, 0.4 - half)) and high == pytest.approx(0.4 + half)
    assert mean_interval([0.5], n_items=100)[1:] == pytest.approx(wilson(50, 100))


def test_paired_difference_and_exact_mcnemar():
    # 10 items: a wins on 6, loses on 1, ties on 3
    a = [1, 1, 1, 1, 1, 1, 0, 1, 0, 1]
    b = [0, 0, 0, 0, 0, 0, 1, 1, 0, 1]
    r = paired_difference(a, b)
    assert r["wins"] == 6 and r["losses"] == 1 and r["n"] == 10
    assert r["diff"] == pytest.approx(0.5)
    assert r["p"] == pytest.approx(0.125)  # 2 * P(X <= 1), X ~ Bin(7, 1/2) = 2 * 8/128
    assert r["low"] < 0.5 < r["high"]
    same = paired_difference(a, a)
    assert same["diff"] == 0 and same["p"] == 1.0


def test_paired_difference_needs_aligned_items():
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])
