"""The differentiable guided sampler: the same plans as the no-grad sampler, and exact gradients into the guide.

Tiny untrained diffusers: the sampler's arithmetic, not the model's quality, is under test.
"""

import pytest
import torch
from tolerances import assert_float32_close
from torch import nn

from rrf_ray.diffusion.differentiable import (
    estimate_backprop_memory,
    guided_sample_with_grad,
    saved_activation_bytes,
)
from rrf_ray.diffusion.model import TrajectoryDiffuser
from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec

T, H, D, A = 5, 8, 3, 1  # diffusion steps, horizon, transition dim, action dim
B = 4
GUIDED = GuidanceSpec(scale=0.5, n_guide_steps=2, t_stopgrad=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors (tests/conftest.py)


def tiny_model(dtype=torch.float32, prediction="sample", clip=True) -> TrajectoryDiffuser:
    torch.manual_seed(0)
    spec = DiffusionSpec(n_timesteps=T, dim=8, dim_mults=[1, 2], prediction=prediction, clip_denoised=clip)
    return TrajectoryDiffuser(D, A, H, spec).eval().to(dtype)


class LinearGuide(nn.Module):
    """R_phi(x) = w . x: the brief's linear reward; its x-gradient is w itself."""

    def __init__(self, dtype):
        super().__init__()
        self.w = nn.Parameter(0.3 * torch.randn(H, D, generator=torch.Generator().manual_seed(1), dtype=dtype))

    def forward(self, x, t):
        return (self.w * x).sum(dim=(1, 2))


class MLPGuide(nn.Module):
    """R_phi(x) = v . tanh(W flat(x)): its x-gradient depends on x, so the chain sees R's Hessian too."""

    def __init__(self, dtype):
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.W = nn.Parameter(0.3 * torch.randn(6, H * D, generator=g, dtype=dtype))
        self.v = nn.Parameter(torch.randn(6, generator=g, dtype=dtype))

    def forward(self, x, t):
        return torch.tanh(x.flatten(1) @ self.W.T) @ self.v


def start(dtype=torch.float32):
    return {0: torch.randn(B, D - A, generator=torch.Generator().manual_seed(3), dtype=dtype)}


def gen():
    return torch.Generator().manual_seed(7)


def zero_guide(x, t):
    return (0.0 * x).sum(dim=(1, 2))


# -- (a) the forward pass is the no-grad sampler ---------------------------------------

@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
@pytest.mark.parametrize("case", ["scale0", "zero_guide", "linear", "mlp", "linear_nostd"])
@pytest.mark.parametrize("backprop_steps", [None, 2])
def test_forward_pass_equals_the_no_grad_sampler(prediction, case, backprop_steps):
    model = tiny_model(prediction=prediction, clip=prediction == "sample")
    guide, guidance = {
        "scale0": (LinearGuide(torch.float32), GuidanceSpec(scale=0.0)),
        "zero_guide": (zero_guide, GUIDED),
        "linear": (LinearGuide(torch.float32), GUIDED),
        "mlp": (MLPGuide(torch.float32), GUIDED),
        "linear_nostd": (LinearGuide(torch.float32), GuidanceSpec(scale=0.05, scale_grad_by_std=False)),
    }[case]
    cond = start()
    ours = guided_sample_with_grad(model, B, cond, guide, guidance, backprop_steps, generator=gen())
    theirs = model.sample(B, cond, guide, guidance, generator=gen()).x
    assert ours.shape == (B, H, D)
    assert_float32_close(ours.detach(), theirs)
    if case in ("scale0", "zero_guide"):  # and that is the unguided sample of the same noise
        assert_float32_close(ours.detach(), model.sample(B, cond, generator=gen()).x)
    else:  # the guide did move the plans, so the comparison above is not vacuous
        assert (theirs - model.sample(B, cond, generator=gen()).x).abs().max() > 1e-3


# -- (b) gradients w.r.t. phi against finite differences ---------------------------------

def plan_loss(plans: torch.Tensor) -> torch.Tensor:
    target = torch.linspace(-1, 1, plans[:, :3].numel(), dtype=plans.dtype).view_as(plans[:, :3])
    return ((plans[:, :3] - target) ** 2).mean() + torch.sin(3 * plans).mean()


def loss_of(model, guide, guidance, backprop_steps=None):
    return plan_loss(guided_sample_with_grad(model, B, start(torch.float64), guide, guidance, backprop_steps, gen()))


@pytest.mark.parametrize("guide_cls", [LinearGuide, MLPGuide])
@pytest.mark.parametrize("guidance", [GUIDED, GuidanceSpec(scale=0.05, scale_grad_by_std=False)], ids=["std", "nostd"])
def test_gradient_matches_finite_differences(guide_cls, guidance):
    """Directional derivatives along random directions in phi-space against a 4-point central difference.

    float64, and no clamp in the model (clip_denoised off), so the loss is smooth in phi. The
    stencil's truncation error is O(h^4) (here ~1e-4 relative at h = 1e-4, the guided chain is
    strongly curved, so ~1e-8 at h = 1e-5) and its rounding error ~1e-16 / h = 1e-11; the
    tolerance 1e-6 is far above both and far below any missing term.
    """
    model = tiny_model(torch.float64, clip=False)
    guide = guide_cls(torch.float64)
    params = list(guide.parameters())
    grads = torch.autograd.grad(loss_of(model, guide, guidance), params)
    g = torch.Generator().manual_seed(11)
    h = 1e-5

    def shifted(direction, s):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(s * d)
            value = loss_of(model, guide, guidance).item()
            for p, d in zip(params, direction):
                p.sub_(s * d)
        return value

    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params]
        f = {s: shifted(direction, s * h) for s in (-2, -1, 1, 2)}
        numeric = (8 * (f[1] - f[-1]) - (f[2] - f[-2])) / (12 * h)
        analytic = sum((gr * d).sum() for gr, d in zip(grads, direction)).item()
        assert abs(numeric) > 1e-3  # the guide does matter
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-12)


# -- (c) truncated backpropagation --------------------------------------------------------

def manually_detached_plans(model, guide, guidance, k):
    """The chain written out: no graph for steps >= k, x detached, then the last k steps with a graph."""
    cond = start(torch.float64)
    generator = gen()
    with torch.no_grad():
        x = model.initial_noise(B, cond, generator)
        for i in reversed(range(k, T)):
            x = model.reverse_step(x, i, cond, guide, guidance, generator)
    x = x.detach()
    for i in reversed(range(k)):
        x = model.reverse_step(x, i, cond, guide, guidance, generator, create_graph=True)
    return x


class FrozenBefore(nn.Module):
    """The guide with phi only at steps t < k (a frozen copy phi0 above): same value at phi = phi0,
    and its full-chain gradient is by construction the gradient of the last k steps only."""

    def __init__(self, guide, k):
        super().__init__()
        self.live, self.k = guide, k
        self.frozen = MLPGuide(torch.float64)
        self.frozen.load_state_dict(guide.state_dict())
        self.frozen.requires_grad_(False)

    def forward(self, x, t):
        return self.live(x, t) if int(t[0]) < self.k else self.frozen(x, t)


def test_backprop_steps_truncate_the_chain():
    model = tiny_model(torch.float64, prediction="epsilon", clip=False)
    guide = MLPGuide(torch.float64)
    params = list(guide.parameters())
    k = 2

    def grads(plans):
        return torch.cat([g.flatten() for g in torch.autograd.grad(plan_loss(plans), params)])

    truncated = grads(guided_sample_with_grad(model, B, start(torch.float64), guide, GUIDED, k, gen()))
    manual = grads(manually_detached_plans(model, guide, GUIDED, k))
    torch.testing.assert_close(truncated, manual, rtol=1e-12, atol=1e-15)
    by_construction = grads(guided_sample_with_grad(model, B, start(torch.float64), FrozenBefore(guide, k), GUIDED,
                                                    None, gen()))
    torch.testing.assert_close(truncated, by_construction, rtol=1e-10, atol=1e-13)
    full = grads(guided_sample_with_grad(model, B, start(torch.float64), guide, GUIDED, None, gen()))
    assert (full - truncated).abs().max() > 1e-3 * full.abs().max()
    assert torch.equal(full, grads(guided_sample_with_grad(model, B, start(torch.float64), guide, GUIDED, T, gen())))


def test_no_guided_step_in_the_graph_means_no_gradient():
    """backprop_steps <= t_stopgrad: the differentiable steps are all unguided, plans do not depend on phi."""
    model = tiny_model()
    plans = guided_sample_with_grad(model, B, start(), LinearGuide(torch.float32), GUIDED, 1, gen())
    assert not plans.requires_grad
    with pytest.raises(ValueError, match="backprop_steps must be >= 1"):
        guided_sample_with_grad(model, B, start(), LinearGuide(torch.float32), GUIDED, 0, gen())


# -- (d) the base model stays frozen --------------------------------------------------------

def test_base_model_gets_no_gradient_and_keeps_its_flags():
    model = tiny_model()
    guide = MLPGuide(torch.float32)
    plans = guided_sample_with_grad(model, B, start(), guide, GUIDED, None, gen())
    plan_loss(plans).backward()
    assert all(p.grad is None for p in model.parameters())
    assert all(p.requires_grad for p in model.parameters())  # frozen only while sampling
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.parameters())


# -- memory estimate ------------------------------------------------------------------------

def test_memory_estimate_matches_what_a_run_saves():
    """The per-step probe, extrapolated to batch and chain length, is within 10% of a real run's saved bytes."""
    model = tiny_model()
    guide = MLPGuide(torch.float32)
    exclude = list(model.parameters()) + list(model.buffers()) + list(guide.parameters())
    batch = 16
    cond = {0: torch.zeros(batch, D - A)}
    for k in (None, 3):
        estimate = estimate_backprop_memory(model, guide, GUIDED, batch, k)
        measured = saved_activation_bytes(
            lambda k=k: guided_sample_with_grad(model, batch, cond, guide, GUIDED, k, gen()), exclude)
        assert estimate.activation_bytes == pytest.approx(measured, rel=0.1)
        assert (estimate.n_guided, estimate.n_unguided) == ((4, 1) if k is None else (2, 1))
    assert "GiB" in estimate.describe()
    double = estimate_backprop_memory(model, guide, GUIDED, 2 * batch, None)
    single = estimate_backprop_memory(model, guide, GUIDED, batch, None)
    assert double.activation_bytes == pytest.approx(2 * single.activation_bytes, rel=0.05)
