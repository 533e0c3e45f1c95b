"""Tolerances for comparing two float32 computations of the same formula.

Two correct float32 implementations that sum in another order (another BLAS kernel, thread
count, library release or CPU) differ by a few ulps *of the largest terms summed*, so an
element near zero may differ by far more than its own ulp. A fixed `atol` therefore passes
on one machine and fails on another as soon as the values' magnitude changes; a bound in
units of float32 epsilon times the values' scale says what it means and travels.
"""

from __future__ import annotations

import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)  # 1.19e-7


def assert_float32_close(actual, desired, scale: float | None = None, ulps: float = 128) -> None:
    """Every element within `ulps` float32 epsilons of `scale` (default: the largest |desired|).

    128 ulps of the scale (a relative error of 1.5e-5) covers the reordering noise of a few
    network evaluations chained together and is orders of magnitude below any change of
    behaviour the tests look for (a dropped guidance term moves latents by > 1e-3 of scale).
    """
    actual, desired = np.asarray(actual, dtype=np.float64), np.asarray(desired, dtype=np.float64)
    scale = float(np.max(np.abs(desired))) if scale is None else float(scale)
    np.testing.assert_allclose(actual, desired, rtol=0, atol=ulps * F32_EPS * max(scale, 1.0))
