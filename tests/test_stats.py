"""The statistics against hand-computed values, and a simulation with known variance components:
the intervals cover the truth 93-97% of the time and a true null is rejected at most 6% of the
time, where the pooled estimator that treated 3 replications x 300 items as 900 independent
pairs (its formula written out below) covered about a third of the time."""

import math

import numpy as np
import pytest
from scipy.stats import t as student_t

from maet.evaluation.stats import (
    accuracy,
    adjust_rows,
    crossed_se,
    holm,
    interval_text,
    mean_squares,
    min_detectable,
    p_text,
    paired_difference,
    percent,
    wilson,
)


def test_wilson_interval_on_known_values():
    low, high = wilson(8, 10)  # textbook value: 0.490 .. 0.943
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 20)[0] == 0.0 and wilson(20, 20)[1] == 1.0
    assert wilson(1, 1) == pytest.approx((0.2065, 1.0), abs=1e-4)  # 1 / (1 + z^2) = 0.2065
    assert all(math.isnan(x) for x in wilson(0, 0))


# A 2 x 3 table worked by hand: grand mean 1/2, replication means 2/3 and 1/3, item means 1/2, 0, 1;
# MS_rep = 3 (1/36 + 1/36) = 1/6, MS_item = 2 (0 + 1/4 + 1/4) / 2 = 1/2, residuals ±1/3, ±1/6, ±1/6
# -> MS_res = (1/3) / 2 = 1/6; Var = (1/6 + 1/2 - 1/6) / 6 = 1/12; Satterthwaite
# df = (1/2)^2 / ((1/6)^2 / 1 + (1/2)^2 / 2 + (1/6)^2 / 2) = 1.5.
TABLE = np.array([[1, 0, 1], [0, 0, 1]], dtype=float)


def test_mean_squares_and_standard_error_by_hand():
    assert mean_squares(TABLE) == pytest.approx((1 / 6, 1 / 2, 1 / 6))
    se, df, _ = crossed_se(TABLE)
    assert se == pytest.approx(math.sqrt(1 / 12)) and df == pytest.approx(1.5)
    e = accuracy(TABLE)
    assert e.mean == pytest.approx(0.5) and (e.low, e.high) == (0.0, 1.0)  # ± t(0.975, 1.5) = 6.02 se: clipped
    assert e.replications == 2 and e.items == 3
    assert e.components == pytest.approx((0.0, (1 / 2 - 1 / 6) / 2, 1 / 6))  # rep: MS_rep = MS_res -> 0
    assert (e.se, e.df) == pytest.approx((math.sqrt(1 / 12), 1.5))
    assert e.p == pytest.approx(2 * t_sf(0.5 / math.sqrt(1 / 12), 1.5))  # t test of mean = 0
    d = paired_difference(TABLE, np.zeros_like(TABLE))  # the same table as differences from a model that never scores
    assert d["diff"] == pytest.approx(0.5) and (d["se"], d["df"]) == pytest.approx((math.sqrt(1 / 12), 1.5))
    assert (d["low"], d["high"]) == (-1.0, 1.0)  # 0.5 ± 6.02 se, clipped to what a difference of proportions can be
    assert d["resolves"] == pytest.approx((t_quantile(0.975, 1.5) + t_quantile(0.8, 1.5)) * math.sqrt(1 / 12))


# 3 x 4, both components positive: grand mean 1/3, replication means 3/4, 1/4, 0, item means 1/3, 2/3, 0,
# 1/3 -> MS_rep = 4 (25 + 1 + 16) / 144 / 2 = 7/12, MS_item = 3 (0 + 1/9 + 1/9 + 0) / 3 = 2/9;
# SS_total = 4 (2/3)^2 + 8 (1/3)^2 = 8/3, SS_res = 8/3 - 2 (7/12) - 3 (2/9) = 5/6 -> MS_res = 5/36.
# Var = (7/12 + 2/9 - 5/36) / 12 = 1/18; df = (2/3)^2 / ((7/12)^2 / 2 + (2/9)^2 / 3 + (5/36)^2 / 6) = 3456/1476;
# components: ((7/12 - 5/36) / 4, (2/9 - 5/36) / 3, 5/36) = (1/9, 1/36, 5/36).
TABLE_3X4 = np.array([[1, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=float)


def test_variance_components_and_their_degrees_of_freedom_by_hand():
    assert mean_squares(TABLE_3X4) == pytest.approx((7 / 12, 2 / 9, 5 / 36))
    se, df, components = crossed_se(TABLE_3X4)
    assert (se, df) == pytest.approx((math.sqrt(1 / 18), 3456 / 1476))
    assert components == pytest.approx((1 / 9, 1 / 36, 5 / 36))
    # MS_item <= MS_res: the item component is estimated at zero, Var = MS_rep / (R I) on R - 1 df.
    # 3 x 2 [[1, 0], [0, 1], [0, 0]]: item means equal -> MS_item = 0; MS_rep = 2 (1/36 + 1/36 + 4/36) / 2 = 1/6
    se, df, _ = crossed_se(np.array([[1, 0], [0, 1], [0, 0]], dtype=float))
    assert (se, df) == pytest.approx((math.sqrt(1 / 6 / 6), 2))
    # 2 x 3 [[1, 1, 0], [0, 0, 0]]: MS_item = MS_res = 1/6 (equal): zero too; MS_rep = 2/3 -> se 1/3, df 1
    se, df, _ = crossed_se(np.array([[1, 1, 0], [0, 0, 0]], dtype=float))
    assert (se, df) == pytest.approx((1 / 3, 1))


def t_quantile(q: float, df: float) -> float:
    return float(student_t.ppf(q, df))


def t_sf(x: float, df: float) -> float:
    return float(student_t.sf(x, df))


def test_a_difference_without_any_spread_has_a_zero_width_interval():
    ones, zeros = np.ones((2, 3)), np.zeros((2, 3))  # every item, every replication: +1
    d = paired_difference(ones, zeros)
    assert (d["diff"], d["low"], d["high"], d["se"], d["p"]) == (1.0, 1.0, 1.0, 0.0, 0.0)
    same = paired_difference(ones, ones)
    assert (same["diff"], same["low"], same["high"], same["p"]) == (0.0, 0.0, 0.0, 1.0)


def test_one_replication_is_over_items_only():
    y = np.array([[1] * 8 + [0] * 2], dtype=float)
    e = accuracy(y)
    assert (e.mean, e.low, e.high) == pytest.approx((0.8, *wilson(8, 10)))
    assert math.isnan(e.se) and math.isnan(e.df) and (e.replications, e.items) == (1, 10)
    assert e.components == (0.0, 0.0, 0.0)
    # 10 items: a wins on 6, loses on 1, ties on 3 -> exact McNemar p = 2 * 8/128
    a = np.array([[1, 1, 1, 1, 1, 1, 0, 1, 0, 1]])
    b = np.array([[0, 0, 0, 0, 0, 0, 1, 1, 0, 1]])
    r = paired_difference(a, b)
    assert (r["wins"], r["losses"], r["n"], r["replications"]) == (6, 1, 10, 1)
    assert r["diff"] == pytest.approx(0.5) and r["p"] == pytest.approx(0.125)
    d = a[0] - b[0]
    half = 2.2621572 * d.std(ddof=1) / math.sqrt(10)  # t(0.975, 9) * sd / sqrt(n)
    assert (r["low"], r["high"]) == pytest.approx((0.5 - half, min(1.0, 0.5 + half)), abs=1e-6)  # clipped at +1
    same = paired_difference(a, a)
    assert same["diff"] == 0 and same["p"] == 1.0


def test_replications_that_agree_still_leave_the_item_sampling():
    """The base shared by every replication (or a deterministic model): the interval is over items,
    never a zero-width one."""
    one = np.array([1] * 12 + [0] * 288, dtype=float)
    e = accuracy(np.stack([one, one, one]))
    assert e.mean == pytest.approx(0.04) and e.low < 0.03 and e.high > 0.05


def test_paired_difference_needs_aligned_tables():
    for a, b in [(np.ones((3, 2)), np.ones((3, 1))), (np.ones(3), np.ones(3)), (np.ones((1, 0)), np.ones((1, 0)))]:
        with pytest.raises(ValueError, match=r"aligned, non-empty \[replications, items\]"):
            paired_difference(a, b)


def test_paired_difference_of_few_items_and_of_boolean_tables():
    one = paired_difference(np.array([[1.0]]), np.array([[0.0]]))  # one item: no standard error
    assert one["diff"] == 1.0 and math.isnan(one["se"]) and one["p"] == 1.0  # McNemar: 1 win of 1
    two = paired_difference(np.array([[1.0, 1.0]]), np.array([[0.0, 1.0]]))  # d = 1, 0: sd 0.7071 / sqrt 2 = 0.5
    assert (two["diff"], two["se"], two["df"]) == pytest.approx((0.5, 0.5, 1))
    a, b = TABLE.astype(bool), np.zeros_like(TABLE, dtype=bool)
    assert paired_difference(a, b) == paired_difference(TABLE, np.zeros_like(TABLE))
    assert accuracy(a).as_dict() == accuracy(TABLE).as_dict()


def test_holm_and_the_detectable_difference_by_hand():
    # sorted 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert min_detectable(0.01, 1e6) == pytest.approx((1.959964 + 0.841621) * 0.01, rel=1e-4)
    assert min_detectable(0.01, 2) == pytest.approx((4.302653 + 1.060660) * 0.01, rel=1e-4)  # t(0.975, 2) + t(0.8, 2)
    assert all(math.isnan(min_detectable(se, df)) for se, df in [(0.0, 5), (math.inf, 5), (0.01, math.nan)])
    rows = adjust_rows([{"p": 0.01, "se": 0.01, "df": 2.0}, {"p": 0.04, "se": 0.02, "df": 2.0}])
    assert [r["p_holm"] for r in rows] == pytest.approx([0.02, 0.04]) and [r["family"] for r in rows] == [2, 2]
    # Holm's strictest step of 2 rows: two-sided 0.025, t(0.9875, 2) = 6.205347; t(0.8, 2) = 1.060660
    assert [r["resolves_holm"] for r in rows] == pytest.approx([(6.205347 + 1.060660) * s for s in (0.01, 0.02)],
                                                               rel=1e-4)


def test_numbers_as_the_tables_print_them():
    assert (percent(0.1234), percent(0.05, signed=True), percent(-0.05, signed=True)) == ("12.3", "+5.0", "-5.0")
    assert (percent(0.5, width=6), percent(None), percent(float("nan"))) == ("  50.0", "", "")
    assert interval_text(0.123, 0.081, 0.17) == "12.3 [8.1, 17.0]"
    assert interval_text(0.02, -0.01, 0.05, signed=True, width=5) == " +2.0 [-1.0, +5.0]"
    assert interval_text(0.05, 0.01, 0.09, signed=True) == "+5.0 [+1.0, +9.0]"
    assert (p_text(0.0004), p_text(0.001), p_text(0.0123)) == ("p<0.001", "p=0.001", "p=0.012")


# ----------------------------------------------------------------------------- coverage by simulation
N_REP, N_ITEMS, REP_SD = 3, 300, 0.08


def simulate(rng, delta: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n tables of two models' 0/1 scores [n, R, I]: item difficulty p_i ~ U(0.3, 0.6), a
    replication effect shared by both models (SD 5 points), and for model a the true difference
    delta, an item x model effect (SD 10 points) and a replication effect of the difference (SD 8
    points, the spread the seeds show on the testbed); both models read the same uniform per
    cell, so their scores are correlated as two models on one item are."""
    p = rng.uniform(0.3, 0.6, (n, 1, N_ITEMS))
    shared = rng.normal(0, 0.05, (n, N_REP, 1))
    item_gain = rng.normal(0, 0.10, (n, 1, N_ITEMS))
    rep_gain = rng.normal(0, REP_SD, (n, N_REP, 1))
    u = rng.uniform(size=(n, N_REP, N_ITEMS))
    b = u < np.clip(p + shared, 0, 1)
    a = u < np.clip(p + shared + delta + item_gain + rep_gain, 0, 1)
    return a.astype(float), b.astype(float)


def true_difference(delta: float) -> float:
    """E[a - b] over new replications and new items, by a large Monte Carlo draw of the same model
    (the clipping at 0 and 1 moves it slightly off delta)."""
    a, b = simulate(np.random.default_rng(99), delta, 2000)
    return float((a - b).mean())


def pooled_interval(d: np.ndarray) -> tuple[float, float]:
    """The estimator this project used before: the R x I differences as independent pairs,
    mean ± 1.96 sd / sqrt(R I)."""
    flat = d.ravel()
    half = 1.959964 * flat.std(ddof=1) / math.sqrt(flat.size)
    return flat.mean() - half, flat.mean() + half


@pytest.mark.parametrize("delta", [0.0, 0.05])
def test_intervals_cover_the_truth_and_a_true_null_is_rarely_rejected(delta):
    truth = true_difference(delta)
    a, b = simulate(np.random.default_rng(int(delta * 100)), delta, 1500)
    covered = rejected = pooled_covered = 0
    for ta, tb in zip(a, b):
        r = paired_difference(ta, tb)
        covered += r["low"] <= truth <= r["high"]
        rejected += r["p"] < 0.05
        low, high = pooled_interval(ta - tb)
        pooled_covered += low <= truth <= high
    coverage, pooled = covered / len(a), pooled_covered / len(a)
    assert 0.93 <= coverage <= 0.97, coverage
    assert pooled < 0.6, pooled  # the pooled estimator fails this test (about a third)
    if delta == 0.0:
        assert rejected / len(a) <= 0.06, rejected / len(a)


def test_accuracy_intervals_cover_the_truth():
    a, _ = simulate(np.random.default_rng(7), 0.05, 1500)
    truth = float(simulate(np.random.default_rng(99), 0.05, 2000)[0].mean())
    coverage = np.mean([accuracy(t).low <= truth <= accuracy(t).high for t in a])
    assert 0.93 <= coverage <= 0.97, coverage
