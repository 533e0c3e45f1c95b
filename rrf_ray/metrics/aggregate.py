"""Statistics across seeds and paired comparisons, as the reports print them.

Across seeds (each seed a whole run: its own data, models and rollouts) the reports use `rliable`
(Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", arXiv:2108.13264): the
interquartile mean with a stratified-bootstrap 95% interval, and the probability of improvement.
Steered vs unsteered rollouts that share their environment and noise seeds are compared episode by
episode: the mean paired difference with a bootstrap interval (scipy's `bootstrap`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

BOOTSTRAP_REPS = 2000


@dataclass(frozen=True)
class Estimate:
    """A point estimate and its 95% interval (NaN where there is too little data for one)."""

    value: float
    low: float
    high: float
    n: int

    def format(self, digits: int = 2) -> str:
        if not np.isfinite(self.value):
            return "—"
        if not (np.isfinite(self.low) and np.isfinite(self.high)):
            return f"{self.value:.{digits}f} (n = {self.n}, no interval)"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and (self.low > 0 or self.high < 0))


NAN_ESTIMATE = Estimate(float("nan"), float("nan"), float("nan"), 0)


def _rliable_intervals(score_dict, func, reps: int, seed: int):
    """rliable's stratified bootstrap, seeded; arch's warning about RandomState (which rliable passes) muted."""
    from rliable import library as rly

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return rly.get_interval_estimates(score_dict, func, reps=reps, random_state=np.random.RandomState(seed))


def _scores_matrix(scores) -> np.ndarray:
    """(runs,) or (runs, tasks) -> (runs, tasks) float64."""
    x = np.asarray(scores, dtype=np.float64)
    return x[:, None] if x.ndim == 1 else x


def iqm(scores_by_method: dict[str, np.ndarray], reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, Estimate]:
    """Interquartile mean over runs (and tasks) with rliable's stratified-bootstrap 95% interval.

    `scores_by_method[m]`: (runs,) or (runs, tasks), one row per seed. With one run there is no
    interval (NaN bounds): a single seed says nothing about seed-to-seed variation."""
    from rliable import metrics

    out = {}
    for method, scores in scores_by_method.items():
        x = _scores_matrix(scores)
        if x.size == 0 or not np.isfinite(x).all():
            out[method] = NAN_ESTIMATE if x.size == 0 else Estimate(float("nan"), float("nan"), float("nan"), len(x))
            continue
        value = float(metrics.aggregate_iqm(x))
        if len(x) < 2:
            out[method] = Estimate(value, float("nan"), float("nan"), len(x))
            continue
        points, intervals = _rliable_intervals({method: x}, lambda s: np.array([metrics.aggregate_iqm(s)]),
                                               reps, seed)
        low, high = intervals[method][:, 0]
        out[method] = Estimate(float(points[method][0]), float(low), float(high), len(x))
    return out


def probability_of_improvement(x, y, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Estimate:
    """P(X > Y) of two methods' runs (rliable: the Mann-Whitney U statistic, averaged over tasks),
    with a stratified-bootstrap 95% interval. x, y: (runs,) or (runs, tasks)."""
    from rliable import metrics

    x, y = _scores_matrix(x), _scores_matrix(y)
    if x.size == 0 or y.size == 0 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        return NAN_ESTIMATE
    value = float(metrics.probability_of_improvement(x, y))
    if min(len(x), len(y)) < 2:
        return Estimate(value, float("nan"), float("nan"), min(len(x), len(y)))
    points, intervals = _rliable_intervals({"pair": [x, y]}, metrics.probability_of_improvement, reps, seed)
    low, high = intervals["pair"][:, 0]
    return Estimate(float(points["pair"]), float(low), float(high), min(len(x), len(y)))


def paired_difference(a, b, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Estimate:
    """Mean of a - b over pairs (e.g. steered and unsteered episodes with the same environment and noise
    seeds) and its 95% bootstrap interval (BCa, scipy). Non-finite pairs make the estimate NaN: they are
    counted by the caller, never dropped here."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference needs pairs: shapes {a.shape} and {b.shape} differ")
    d = a - b
    if len(d) == 0 or not np.isfinite(d).all():
        return Estimate(float("nan"), float("nan"), float("nan"), len(d))
    if len(d) < 2 or np.ptp(d) <= 1e-9 * max(1.0, float(np.abs(d).max())):  # no spread: no bootstrap
        return Estimate(float(d.mean()), float(d.mean()) if len(d) > 1 else float("nan"),
                        float(d.mean()) if len(d) > 1 else float("nan"), len(d))
    ci = stats.bootstrap((d,), np.mean, n_resamples=reps, confidence_level=0.95, method="BCa",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return Estimate(float(d.mean()), float(ci.low), float(ci.high), len(d))


def mean_interval(x, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> Estimate:
    """Mean and its 95% bootstrap interval (BCa, scipy); NaN if any value is not finite (count those)."""
    return paired_difference(np.asarray(x, dtype=np.float64), np.zeros(len(x)), reps, seed)



def spearman_correlation(x, y, reps: int = 1000, seed: int = 0) -> Estimate:
    """Spearman's rank correlation of x and y and its 95% bootstrap interval over pairs (percentile:
    BCa's jackknife is slow and unstable for a rank statistic). NaN with fewer than 3 pairs or a
    constant side, where rank correlation is undefined."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    if n < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), n)
    rho = float(stats.spearmanr(x, y).statistic)
    ci = stats.bootstrap((x, y), lambda a, b: stats.spearmanr(a, b).statistic, paired=True, vectorized=False,
                         n_resamples=reps, method="percentile",
                         random_state=np.random.default_rng(seed)).confidence_interval
    return Estimate(rho, float(ci.low), float(ci.high), n)
