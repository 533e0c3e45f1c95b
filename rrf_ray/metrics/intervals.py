"""Uncertainty of a rate or a mean, as the reports print it."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def rate_with_interval(successes) -> tuple[float, float]:
    """Success rate p and the 95% normal-approximation half-width 1.96*sqrt(p(1-p)/n); NaNs for n = 0."""
    s = np.asarray(list(successes), dtype=np.float64)
    if s.size == 0:
        return float("nan"), float("nan")
    p = float(s.mean())
    return p, float(1.96 * math.sqrt(p * (1.0 - p) / s.size))


def standard_error(values) -> float:
    """Standard error of the mean (ddof 1); 0 for fewer than two values."""
    v = np.asarray(values, dtype=np.float64)
    return float(stats.sem(v, ddof=1)) if len(v) > 1 else 0.0
