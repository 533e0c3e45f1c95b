"""Episode Return Correlation (ERC; docs/method.md, Evaluation, thesis): does the learned reward rank windows like the true one?

ERC is the Pearson distance sqrt((1 - r) / 2) between learned and true returns on a
coverage set: 0 for perfectly correlated, 0.5 for unrelated, 1 for anti-correlated
rewards.
"""

from __future__ import annotations

import numpy as np


def erc(learned_returns, true_returns) -> float:
    """Pearson distance between two return vectors; NaN when either is constant (r undefined)."""
    a = np.asarray(learned_returns, dtype=np.float64).reshape(-1)
    b = np.asarray(true_returns, dtype=np.float64).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"need two equally long return vectors of 2+ values, got {a.shape} and {b.shape}")
    if not (np.ptp(a) > 0 and np.ptp(b) > 0):  # a constant vector: r is undefined
        return float("nan")
    r = float(np.clip(np.corrcoef(a, b)[0, 1], -1.0, 1.0))
    return float(np.sqrt((1.0 - r) / 2.0))
