"""Episode Return Correlation (ERC; SPEC section 4, thesis): does the learned reward rank windows like the true one?

ERC is the Pearson distance sqrt((1 - r) / 2) between learned and true returns on a
coverage set: 0 for perfectly correlated, 0.5 for unrelated, 1 for anti-correlated
rewards. For Maze2D the true reward of a window is its mean negative distance to the goal.
"""

from __future__ import annotations

import numpy as np


def erc(learned_returns, true_returns) -> float:
    """Pearson distance between two return vectors; NaN when either is constant (r undefined)."""
    a = np.asarray(learned_returns, dtype=np.float64).reshape(-1)
    b = np.asarray(true_returns, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two equally long return vectors of 2+ values, got {a.shape} and {b.shape}")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if not np.isfinite(denom) or denom == 0:
        return float("nan")
    r = float(np.clip((a * b).sum() / denom, -1.0, 1.0))
    return float(np.sqrt((1.0 - r) / 2.0))


def true_maze_return(positions, goal_xy) -> np.ndarray:
    """(N,) mean over each window's steps of minus the distance to the goal; positions (N, H, 2)."""
    p = np.asarray(positions, dtype=np.float64)
    return -np.linalg.norm(p - np.asarray(goal_xy, dtype=np.float64), axis=-1).mean(axis=-1)
