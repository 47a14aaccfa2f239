"""Intervals and tests over replications x benchmark items, the two crossed random factors.

A job scores every evaluated model on the same I items in each of R replications (a replication
redraws everything random: the base's pre-training and every stage seed). One model's scores are
a matrix `y[R, I]` of 0/1; a paired difference of two models is `a - b` of two such matrices on
the same replications and items (values -1, 0, 1). Model (Clark 1973; Searle et al., *Variance
Components*, ch. 4): `y[r, i] = mu + a_r + b_i + e_ri` with replication, item and residual
effects independent. The mean over the table estimates `mu`, the expectation over new
replications *and* new items, with

    Var(mean) = s2_rep / R + s2_item / I + s2_res / (R I) = (MS_rep + MS_item - MS_res) / (R I)

from the mean squares of the two-way layout (method of moments; the item component is clipped
at zero), and a t interval with Satterthwaite's degrees of freedom for that sum. With R = 3 the
interval is wide when replications disagree: that is what three draws of a world can say.

One replication: the replication variance cannot be estimated, the interval covers the items
only (Wilson for an accuracy; a paired t over items with the exact McNemar p for a difference),
and the tables say so.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _scipy

ESTIMATOR = ("95% t intervals over replications x items as crossed random factors (method-of-moments "
             "variance components, Satterthwaite df); p: t test of the paired difference, that comparison's "
             "own; p (Holm): Holm-adjusted across the rows of its table")
ONE_REPLICATION = ("one replication: intervals over items only (Wilson; paired t with exact McNemar p), "
                   "the variance between replications is not in them")


@dataclass
class Estimate:
    """A mean over replications x items with its 95% interval; `p` tests mean = 0 (differences)."""
    mean: float
    low: float
    high: float
    se: float
    df: float
    replications: int
    items: int
    p: float = 1.0
    components: tuple[float, float, float] = (0.0, 0.0, 0.0)  # (replication, item, residual) variances

    def as_dict(self) -> dict:
        return asdict(self)


def wilson(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_squares(y: np.ndarray) -> tuple[float, float, float]:
    """(MS_rep, MS_item, MS_res) of a two-way layout `y[R, I]` with one value per cell (R, I >= 2)."""
    n_rep, n_items = y.shape
    grand, rep_means, item_means = y.mean(), y.mean(axis=1), y.mean(axis=0)
    ms_rep = n_items * float(((rep_means - grand) ** 2).sum()) / (n_rep - 1)
    ms_item = n_rep * float(((item_means - grand) ** 2).sum()) / (n_items - 1)
    residual = y - rep_means[:, None] - item_means[None, :] + grand
    ms_res = float((residual ** 2).sum()) / ((n_rep - 1) * (n_items - 1))
    return ms_rep, ms_item, ms_res


def crossed_se(y: np.ndarray) -> tuple[float, float, tuple[float, float, float]]:
    """(standard error of y.mean(), Satterthwaite df, variance components) for `y[R, I]`, R >= 2."""
    n_rep, n_items = y.shape
    ms_rep, ms_item, ms_res = mean_squares(y)
    df_rep, df_item, df_res = n_rep - 1, n_items - 1, (n_rep - 1) * (n_items - 1)
    if ms_item > ms_res:  # Var = (MS_rep + MS_item - MS_res) / (R I)
        total = ms_rep + ms_item - ms_res
        denominator = ms_rep ** 2 / df_rep + ms_item ** 2 / df_item + ms_res ** 2 / df_res
    else:  # item component estimated at zero: Var = MS_rep / (R I)
        total, denominator = ms_rep, ms_rep ** 2 / df_rep
    df = total ** 2 / denominator if denominator > 0 else float(df_rep)
    components = (max(ms_rep - ms_res, 0.0) / n_items, max(ms_item - ms_res, 0.0) / n_rep, ms_res)
    return math.sqrt(max(total, 0.0) / (n_rep * n_items)), df, components


def _t_interval(mean: float, se: float, df: float) -> tuple[float, float, float]:
    """(low, high, p of mean = 0): the 95% t interval of `mean` with standard error `se` on `df`."""
    if se == 0:
        return mean, mean, 1.0 if mean == 0 else 0.0
    half = float(_scipy.t.ppf(0.975, df)) * se
    return mean - half, mean + half, float(2 * _scipy.t.sf(abs(mean) / se, df))


def accuracy(y: np.ndarray) -> Estimate:
    """Mean accuracy of `y[R, I]` (0/1) with its 95% interval, clipped to [0, 1]. One replication,
    or a table with no variance at all (every item the same in every replication): Wilson over
    the I items (the item means' sum as the count), which still says how few items there are."""
    y = np.asarray(y, dtype=float)
    n_rep, n_items = y.shape
    mean = float(y.mean())
    se, df, components = crossed_se(y) if n_rep > 1 else (0.0, None, None)
    if se == 0:
        low, high = wilson(float(y.mean(axis=0).sum()), n_items)
        return Estimate(mean, low, high, float("nan"), float("nan"), n_rep, n_items)
    low, high, p = _t_interval(mean, se, df)
    return Estimate(mean, max(0.0, low), min(1.0, high), se, df, n_rep, n_items, p, components)


def common_items(runs: list[list[dict[str, float]]]) -> list[str]:
    """The item ids scored in every replication of every model given (sorted)."""
    ids = set.intersection(*(set(run) for model in runs for run in model))
    return sorted(ids)


def score_table(runs: list[dict[str, float]], items: list[str]) -> np.ndarray:
    """`[replications, items]` 0/1 table of one model: row r, column i = correct on item i in replication r."""
    return np.array([[run[i] for i in items] for run in runs], dtype=float)


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """Paired comparison of two models on the same replications and items (`a[R, I]`, `b[R, I]`,
    0/1): mean of a - b with its 95% interval and p (crossed random factors; one replication: a
    paired t over items and the exact McNemar test), plus wins / losses over the item pairs."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape or a.size == 0 or a.ndim != 2:
        raise ValueError(f"paired comparison needs aligned, non-empty [replications, items] tables "
                         f"(got {a.shape} and {b.shape})")
    d = a - b
    n_rep, n_items = d.shape
    mean, wins, losses = float(d.mean()), int((d > 0).sum()), int((d < 0).sum())
    if n_rep == 1:
        se, df = (float(d.std(ddof=1)) / math.sqrt(n_items) if n_items > 1 else float("nan")), n_items - 1
    else:
        se, df, _ = crossed_se(d)
    low, high, p = _t_interval(mean, se, df)
    if n_rep == 1:  # the exact McNemar test of the discordant pairs
        p = float(_scipy.binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0
    return {"diff": mean, "low": max(-1.0, low), "high": min(1.0, high),  # a difference of proportions: in [-1, 1]
            "p": p, "se": se, "df": df, "replications": n_rep, "n": d.size, "wins": wins, "losses": losses,
            "resolves": min_detectable(se, df)}


def min_detectable(se: float, df: float, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true difference a two-sided test at `alpha` detects with `power`, for a
    difference estimated with standard error `se` on `df` degrees of freedom (nan without one)."""
    if not se or not math.isfinite(se) or not math.isfinite(df):
        return float("nan")
    return float((_scipy.t.ppf(1 - alpha / 2, df) + _scipy.t.ppf(power, df)) * se)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment of the p-values of one table (statsmodels)."""
    if not pvalues:
        return []
    from statsmodels.stats.multitest import multipletests

    return [float(p) for p in multipletests(pvalues, method="holm")[1]]


def adjust_rows(rows: list[dict]) -> list[dict]:
    """The comparisons of one table (dicts of `paired_difference`), with `p_holm` (Holm across the
    rows), `family` (their number) and `resolves_holm`: the difference detected with 80% power at
    Holm's strictest step (two-sided 0.05 / number of rows)."""
    for row, adjusted in zip(rows, holm([r["p"] for r in rows])):
        row["p_holm"], row["family"] = adjusted, len(rows)
        row["resolves_holm"] = min_detectable(row["se"], row["df"], alpha=0.05 / len(rows))
    return rows


def percent(x: float | None, signed: bool = False, width: int = 0) -> str:
    """`0.123` -> `12.3` (`+12.3` signed, right-aligned in `width`); "" for None or nan."""
    return "" if x is None or x != x else format(100 * x, f"{'+' if signed else ''}{width or ''}.1f")


def interval_text(value: float | None, low: float | None, high: float | None, signed: bool = False,
                  width: int = 0) -> str:
    """`12.3 [8.1, 17.0]`: a proportion and its interval in percent (points when signed)."""
    return f"{percent(value, signed, width)} [{percent(low, signed)}, {percent(high, signed)}]"


def p_text(p: float) -> str:
    """`p=0.012`, `p<0.001`."""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"
