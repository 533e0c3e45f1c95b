"""Trajectory distances used as the losses of inverse RL with one diffuser (docs/irl.md)."""

import math

import pytest
import torch
import torch.nn.functional as F

from rrf_ray.metrics.trajectory_distance import gaussian_mixture_kernel, matern_kernel, mmd2_unbiased, mse

KERNELS = {
    "gauss": gaussian_mixture_kernel(),
    "matern0.5": matern_kernel(0.5),
    "matern1.5": matern_kernel(1.5),
    "matern1.5_normalized": matern_kernel(1.5, normalize=True),
}
B, K, D = 64, 5, 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors (tests/conftest.py)


def segments(n, shift=0.0, seed=0):
    """A toy distribution of (K, D) segments: random straight lines, shifted in every coordinate."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(n, 1, D, generator=g, dtype=torch.float64)
    velocity = 0.3 * torch.randn(n, 1, D, generator=g, dtype=torch.float64)
    steps = torch.arange(K, dtype=torch.float64).view(1, K, 1)
    return start + velocity * steps + 0.05 * torch.randn(n, K, D, generator=g, dtype=torch.float64) + shift


def reference_mmd2(x, y, k):
    """Eq. 26 by double loops over the rows, k(a, b) a plain function of two rows."""
    x, y = x.reshape(len(x), -1), y.reshape(len(y), -1)
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


@pytest.mark.parametrize("name", list(KERNELS))
def test_mmd_is_near_zero_for_one_distribution_and_grows_with_the_shift(name):
    """Same distribution: |MMD²| is small against the shifted values (the unbiased estimate may be < 0)."""
    kernel = KERNELS[name]
    same = mmd2_unbiased(segments(B, seed=0), segments(B, seed=1), kernel).item()
    x = segments(B, seed=0)
    shifted = [mmd2_unbiased(x, segments(B, shift, seed=1), kernel).item() for shift in (0.5, 1.0, 2.0)]
    assert shifted[0] < shifted[1] < shifted[2], shifted
    assert abs(same) < 0.1 * shifted[0], (same, shifted)


def test_unbiased_estimate_of_identical_batches_is_negative_not_zero():
    """x = y: the within-set sums leave out i = j but the cross term keeps it, so the estimate is < 0."""
    x = segments(8)
    assert mmd2_unbiased(x, x, KERNELS["gauss"]).item() < 0


def pooled_rows(x, y):
    return torch.cat([x.reshape(len(x), -1), y.reshape(len(y), -1)])


def test_gaussian_mixture_matches_the_double_loop():
    x, y = segments(5, seed=2), segments(4, 0.7, seed=3)  # m != n
    z = pooled_rows(x, y)
    pairs = [((z[i] - z[j]) ** 2).sum() for i in range(len(z)) for j in range(len(z)) if i != j]
    base = sum(pairs) / len(pairs)  # the pooled mean squared pairwise distance

    def k(a, b):
        return sum(torch.exp(-((a - b) ** 2).sum() / (s * base)) for s in (0.25, 0.5, 1.0, 2.0, 4.0))

    torch.testing.assert_close(mmd2_unbiased(x, y, KERNELS["gauss"]), reference_mmd2(x, y, k), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nu", [0.5, 1.5])
def test_matern_matches_the_double_loop(nu):
    x, y = segments(5, seed=2), segments(4, 0.7, seed=3)
    z = pooled_rows(x, y)
    dists = [(z[i] - z[j]).norm() for i in range(len(z)) for j in range(len(z)) if i != j]
    scale = sum(dists) / len(dists)  # the pooled mean pairwise distance

    def k(a, b):
        r = (a - b).norm() / scale
        return torch.exp(-r) if nu == 0.5 else (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)

    torch.testing.assert_close(mmd2_unbiased(x, y, matern_kernel(nu)), reference_mmd2(x, y, k), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", list(KERNELS))
def test_gradients_are_finite_with_duplicate_rows(name):
    """Rows of x equal to each other and to a row of y: the distance's sqrt has no derivative at 0."""
    x = segments(6, seed=4)
    y = segments(5, 0.3, seed=5)
    x[1] = x[0]
    y[2] = x[3]
    x.requires_grad_(True)
    value = mmd2_unbiased(x, y, KERNELS[name])
    grad, = torch.autograd.grad(value, x)
    assert torch.isfinite(value) and torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(KERNELS))
def test_gradient_descent_on_x_moves_it_towards_y(name):
    """The loss's use: a step against the gradient lowers MMD² of a shifted batch."""
    x, y = segments(16, 1.0, seed=6).requires_grad_(True), segments(16, seed=7)
    kernel = KERNELS[name]
    before = mmd2_unbiased(x, y, kernel)
    grad, = torch.autograd.grad(before, x)
    after = mmd2_unbiased(x.detach() - 0.5 * grad / grad.norm(), y, kernel)
    assert after < before


def test_mmd_needs_two_samples_a_side():
    with pytest.raises(ValueError, match="at least 2 samples"):
        mmd2_unbiased(segments(1), segments(4), KERNELS["gauss"])


def test_mse_is_torchs_paired_mse():
    x, y = segments(7, seed=8), segments(7, 0.2, seed=9)
    torch.testing.assert_close(mse(x, y), F.mse_loss(x, y), rtol=0, atol=0)
    torch.testing.assert_close(mse(x, y), ((x - y) ** 2).mean())
    with pytest.raises(ValueError, match="shapes"):
        mse(x, y[:3])
