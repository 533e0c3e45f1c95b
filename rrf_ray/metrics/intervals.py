"""Uncertainty of a rate or a mean, as the reports print it."""

from __future__ import annotations

import numpy as np
from scipy import stats


def rate_with_interval(successes, failures: int = 0) -> tuple[float, float, float]:
    """Success rate and its 95% Wilson interval (rate, low, high) over `successes` (truthy = success) plus
    `failures` outcomes that produced nothing (failed trials count as failures); NaNs when there is none.

    Wilson (scipy's binomtest), not the normal approximation p ± 1.96·sqrt(p(1−p)/n), which collapses
    to ±0 at 0/n and n/n: 16/16 is 100% with an interval of 80.6–100%, not "± 0"."""
    k = sum(bool(x) for x in successes)
    n = len(list(successes)) + int(failures)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return k / n, float(ci.low), float(ci.high)


def format_rate(successes, failures: int = 0) -> str:
    """'93.75% (95% Wilson 71.7–98.9%; 15/16)': the rate, its interval and the counts it rests on."""
    successes = list(successes)
    p, low, high = rate_with_interval(successes, failures)
    k, n = sum(bool(x) for x in successes), len(successes) + int(failures)
    if n == 0:
        return "no trials"
    return f"{100 * p:.2f}% (95% Wilson {100 * low:.1f}–{100 * high:.1f}%; {k}/{n})"


def standard_error(values) -> float:
    """Standard error of the mean (ddof 1); 0 for fewer than two values."""
    v = np.asarray(values, dtype=np.float64)
    return float(stats.sem(v, ddof=1)) if len(v) > 1 else 0.0
