"""Automatic goal recovery (SPEC section 4): does the reward heatmap peak at the expert's goal?

The authors judged heatmaps by eye; rrf_ray decides with a fixed rule so that a sweep
gives a number. The heatmap is smoothed with a Gaussian that ignores masked cells
(normalised convolution), the argmax over unmasked cells is the learned peak, and the
trial succeeds when that cell's centre lies within `radius` maze units of the goal.

Degenerate maps have no peak and do not count as recovered: a map with no unmasked
cell, and a flat map (all smoothed values equal up to floating-point noise, e.g. a
constant reward) where every cell ties. Among exact ties in a non-flat map the first
cell in row-major order (lowest y, then lowest x) is taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rrf_ray.eval.heatmap import Heatmap

# Relative spread below which a smoothed map counts as flat (every cell ties).
FLAT_TOLERANCE = 1e-9


@dataclass
class GoalRecovery:
    success: bool
    distance: float  # maze units from the peak cell's centre to the goal; NaN without a peak
    peak_xy: np.ndarray  # (2,), NaN without a peak


def gaussian_kernel(sigma_cells: float) -> np.ndarray:
    half = max(1, int(math.ceil(4 * sigma_cells)))
    x = np.arange(-half, half + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma_cells) ** 2)
    return k / k.sum()


def _convolve_axis(a: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """Zero-padded 'same' convolution of `a` with a symmetric kernel along one axis."""
    half = len(kernel) // 2
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0]
    padded = np.concatenate([np.zeros((half,) + a.shape[1:]), a, np.zeros((half,) + a.shape[1:])])
    out = np.zeros_like(a, dtype=np.float64)
    for j, w in enumerate(kernel):
        out += w * padded[j:j + n]
    return np.moveaxis(out, 0, axis)


def smooth_masked(values: np.ndarray, mask: np.ndarray, sigma_cells: float) -> np.ndarray:
    """Gaussian smoothing that ignores masked cells: smooth(value*mask) / smooth(mask); NaN outside mask."""
    if sigma_cells <= 0:
        return np.where(mask, values, np.nan)
    kernel = gaussian_kernel(sigma_cells)
    m = mask.astype(np.float64)
    v = np.where(mask, values, 0.0)
    num = _convolve_axis(_convolve_axis(v, kernel, 0), kernel, 1)
    den = _convolve_axis(_convolve_axis(m, kernel, 0), kernel, 1)
    out = np.full(values.shape, np.nan)
    ok = mask & (den > 0)
    out[ok] = num[ok] / den[ok]
    return out


def find_peak(heatmap: Heatmap, sigma: float = 0.25) -> np.ndarray | None:
    """xy of the smoothed map's argmax cell centre, or None for an empty or flat map."""
    mask = heatmap.mask
    if not mask.any():
        return None
    smoothed = smooth_masked(heatmap.mean, mask, sigma / heatmap.cell_size)
    valid = smoothed[np.isfinite(smoothed)]
    if valid.size == 0:
        return None
    hi, lo = float(valid.max()), float(valid.min())
    if hi - lo <= FLAT_TOLERANCE * max(1.0, abs(hi), abs(lo)):
        return None
    iy, ix = np.unravel_index(np.nanargmax(smoothed), smoothed.shape)
    return np.array([heatmap.x_centres[ix], heatmap.y_centres[iy]], dtype=np.float64)


def recover_goal(heatmap: Heatmap, goal_xy, sigma: float = 0.25, radius: float = 0.75) -> GoalRecovery:
    """Success when the smoothed heatmap's peak cell centre lies within `radius` of `goal_xy`."""
    peak = find_peak(heatmap, sigma)
    if peak is None:
        return GoalRecovery(False, float("nan"), np.full(2, np.nan))
    distance = float(np.linalg.norm(peak - np.asarray(goal_xy, dtype=np.float64)))
    return GoalRecovery(bool(distance <= radius), distance, peak)


def rate_with_interval(successes) -> tuple[float, float]:
    """Success rate p and the 95% normal-approximation half-width 1.96*sqrt(p(1-p)/n); NaNs for n = 0."""
    s = np.asarray(list(successes), dtype=np.float64)
    if s.size == 0:
        return float("nan"), float("nan")
    p = float(s.mean())
    return p, float(1.96 * math.sqrt(p * (1.0 - p) / s.size))
