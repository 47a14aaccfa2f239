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
