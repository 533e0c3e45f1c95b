"""Distances between a batch of plans and a batch of expert segments: the losses M of Algorithm 4.

docs/irl.md (thesis Section 2.3.1, eqs. 26 and 58): paired MSE, and the unbiased MMD² between
the two batches as empirical distributions, with a Gaussian-mixture or a Matérn kernel whose
bandwidth follows the pooled batch's scale. Inputs are (B, K, D) (any (B, ...)), one flattened
row per sample. Everything is differentiable w.r.t. the plans, also where two rows coincide:
the reward is trained through these losses, and a NaN there would poison every parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# A kernel maps the pooled rows (N, F) to their Gram matrix (N, N). It sees the pooled batch
# because its bandwidth is set from it.
Kernel = Callable[[torch.Tensor], torch.Tensor]

GAUSSIAN_SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


def mse(plans: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each plan against its own segment (paired, same shapes)."""
    if plans.shape != segments.shape:
        raise ValueError(f"mse pairs plans with segments: shapes {tuple(plans.shape)} != {tuple(segments.shape)}")
    return F.mse_loss(plans, segments)


def squared_distances(z: torch.Tensor) -> torch.Tensor:
    """||z_i - z_j||² (N, N) from differences, so exactly 0 on the diagonal and never negative.

    (The |a|² + |b|² - 2ab expansion cancels badly for close rows; batches here are small.)
    """
    return (z[:, None, :] - z[None, :, :]).pow(2).sum(-1)


def safe_distances(d2: torch.Tensor) -> torch.Tensor:
    """sqrt(d2) with gradient 0 (not NaN) where d2 = 0: the subgradient at coinciding rows."""
    positive = d2 > 0
    return torch.where(positive, torch.where(positive, d2, torch.ones_like(d2)).sqrt(), torch.zeros_like(d2))


def off_diagonal_mean(m: torch.Tensor) -> torch.Tensor:
    n = m.shape[0]
    return (m.sum() - m.diagonal().sum()) / (n * (n - 1))


def gaussian_mixture_kernel(scales: Sequence[float] = GAUSSIAN_SCALES) -> Kernel:
    """k(a, b) = sum_s exp(-||a - b||² / (s * m)), m the pooled mean squared pairwise distance (detached).

    Several bandwidths around the data's own scale keep the gradient alive whether the plans are
    far from the segments or already close (docs/irl.md: s in {1/4, 1/2, 1, 2, 4}).
    """
    scales = tuple(float(s) for s in scales)

    def kernel(z: torch.Tensor) -> torch.Tensor:
        d2 = squared_distances(z)
        base = off_diagonal_mean(d2).detach().clamp(min=torch.finfo(z.dtype).tiny)
        return sum(torch.exp(-d2 / (s * base)) for s in scales)

    return kernel


def matern_kernel(nu: float = 0.5, normalize: bool = False) -> Kernel:
    """Matérn kernel with lengthscale l = the pooled mean pairwise distance (detached).

    nu 0.5: exp(-d/l) (the thesis's text); nu 1.5: (1 + sqrt(3) d/l) exp(-sqrt(3) d/l) (the code
    behind its tables, which also L2-normalised the rows: normalize=True). Rougher than the
    Gaussian: it does not assume smooth trajectories.
    """
    if nu not in (0.5, 1.5):
        raise ValueError(f"matern_kernel supports nu 0.5 or 1.5, got {nu}")

    def kernel(z: torch.Tensor) -> torch.Tensor:
        if normalize:
            z = F.normalize(z, dim=-1)
        d = safe_distances(squared_distances(z))
        scale = off_diagonal_mean(d).detach().clamp(min=torch.finfo(z.dtype).tiny)
        if nu == 0.5:
            return torch.exp(-d / scale)
        r = math.sqrt(3.0) * d / scale
        return (1 + r) * torch.exp(-r)

    return kernel


def mmd2_unbiased(x: torch.Tensor, y: torch.Tensor, kernel: Kernel) -> torch.Tensor:
    """Unbiased MMD² between samples x (m, ...) and y (n, ...), m, n >= 2 (thesis eq. 26/58).

    Within-set sums leave out i = j, the cross term averages all m * n pairs: zero in
    expectation when x and y come from one distribution, so a single batch may give < 0.
    """
    m, n = x.shape[0], y.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"unbiased MMD² needs at least 2 samples on each side, got {m} and {n}")
    z = torch.cat([x.reshape(m, -1), y.reshape(n, -1)])
    gram = kernel(z)
    kxx, kyy, kxy = gram[:m, :m], gram[m:, m:], gram[:m, m:]
    return off_diagonal_mean(kxx) + off_diagonal_mean(kyy) - 2 * kxy.mean()
