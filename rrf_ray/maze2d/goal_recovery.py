"""Automatic goal recovery (docs/method.md, Evaluation): does the reward heatmap peak at the expert's goal?

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
from scipy.ndimage import gaussian_filter

from rrf_ray.maze2d.heatmap import Heatmap

# Relative spread below which a smoothed map counts as flat (every cell ties).
FLAT_TOLERANCE = 1e-9


@dataclass
class GoalRecovery:
    success: bool
    distance: float  # maze units from the peak cell's centre to the goal; NaN without a peak
    peak_xy: np.ndarray  # (2,), NaN without a peak


def smooth_masked(values: np.ndarray, mask: np.ndarray, sigma_cells: float) -> np.ndarray:
    """Gaussian smoothing that ignores masked cells: smooth(value*mask) / smooth(mask); NaN outside mask.

    Zero beyond the map's edges (mode "constant"), the kernel cut at ceil(4 sigma) cells."""
    if sigma_cells <= 0:
        return np.where(mask, values, np.nan)
    radius = max(1, int(math.ceil(4 * sigma_cells)))

    def smooth(a):
        return gaussian_filter(a, sigma_cells, mode="constant", cval=0.0, radius=radius)

    num = smooth(np.where(mask, values, 0.0))
    den = smooth(mask.astype(np.float64))
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
