"""Intervals for accuracies: over seeds (t interval) or, for one seed, over items (Wilson)."""

from __future__ import annotations

import math
import statistics

from scipy import stats as _scipy


def wilson(k: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(values: list[float], n_items: int) -> tuple[float, float, float]:
    """(mean, low, high): a 95% t interval over seeds, or a Wilson interval over the items of one seed."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        low, high = wilson(mean * n_items, n_items)
        return mean, low, high
    half = _scipy.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, max(0.0, mean - half), min(1.0, mean + half)


def paired_difference(a: list[float], b: list[float], z: float = 1.959964) -> dict:
    """Paired comparison of two models on the same items (0/1 correctness, aligned lists).

    diff: mean of a - b with a 95% normal interval from the paired standard error;
    p: two-sided exact McNemar test (binomial test on the discordant pairs).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired comparison needs aligned, non-empty lists (got {len(a)} and {len(b)})")
    d = [x - y for x, y in zip(a, b)]
    n, mean = len(d), statistics.fmean(d)
    se = statistics.stdev(d) / math.sqrt(n) if n > 1 else float("nan")
    wins, losses = sum(x > y for x, y in zip(a, b)), sum(x < y for x, y in zip(a, b))
    p = _scipy.binomtest(wins, wins + losses, 0.5).pvalue if wins + losses else 1.0
    return {"diff": mean, "low": mean - z * se, "high": mean + z * se, "p": float(p), "n": n,
            "wins": wins, "losses": losses}


def percent(x: float | None, signed: bool = False, width: int = 0) -> str:
    """`0.123` -> `12.3` (`+12.3` signed, right-aligned in `width`); "" for None."""
    return "" if x is None else format(100 * x, f"{'+' if signed else ''}{width or ''}.1f")


def interval_text(value: float | None, low: float | None, high: float | None, signed: bool = False,
                  width: int = 0) -> str:
    """`12.3 [8.1, 17.0]`: a proportion and its interval in percent (points when signed)."""
    return f"{percent(value, signed, width)} [{percent(low, signed)}, {percent(high, signed)}]"
