"""Algorithm 4's reward network and loss, free of Ray: the thesis's plan MLP R_phi, the distance M, and
the loss of one batch (plans sampled under R_phi's guidance, differentiably, compared with expert segments).

`irl.reward_learning` runs them as a Ray Train run; `benchmarks/model_rates.py` times them on any device.
"""

from __future__ import annotations

import torch
from torch import nn

from rrf_ray.diffusion.differentiable import guided_sample_with_grad
from rrf_ray.diffusion.model import TrajectoryDiffuser
from rrf_ray.irl.spec import Algorithm4Spec
from rrf_ray.metrics.trajectory_distance import (
    gaussian_mixture_kernel,
    matern_kernel,
    mmd2_unbiased,
    mse,
)


class PlanMLPReward(nn.Module):
    """The thesis's reward: an MLP (ReLU) over the flattened plan (or, per_step, over each row's
    `input_dims`, averaged over rows). It ignores the diffusion step t, as the thesis's does."""

    def __init__(self, horizon: int, transition_dim: int, hidden, per_step: bool = False, input_dims=None):
        super().__init__()
        self.per_step = per_step
        self.input_dims = None if input_dims is None else [int(d) for d in input_dims]
        row = transition_dim if self.input_dims is None else len(self.input_dims)
        width = row if per_step else horizon * row
        layers = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if self.input_dims is not None:
            x = x[..., self.input_dims]
        if self.per_step:
            return self.mlp(x).squeeze(-1).mean(dim=1)
        return self.mlp(x.reshape(x.shape[0], -1)).squeeze(-1)


def build_irl_reward(spec: Algorithm4Spec, horizon: int, transition_dim: int) -> PlanMLPReward:
    return PlanMLPReward(horizon, transition_dim, spec.hidden, per_step=spec.net == "window_mlp",
                         input_dims=spec.input_dims)


def trajectory_loss(metric: str, nu: float = 0.5):
    """M(plans, segments) of Algorithm 4, on (B, K, D) tensors."""
    if metric == "mse":
        return mse
    kernel = gaussian_mixture_kernel() if metric == "mmd_gauss" else matern_kernel(nu)
    return lambda plans, segments: mmd2_unbiased(plans, segments, kernel)


def algorithm4_loss(model: TrajectoryDiffuser, net: nn.Module, segments: torch.Tensor, spec: Algorithm4Spec,
                    loss_fn, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(M(plans, segments), plans) for one batch of (B, K, D) expert segments: plans start at the segments'
    first states and are sampled under R_phi's guidance with the last `backprop_steps` reverse steps
    differentiable, so the loss's gradient reaches phi through the sampler."""
    a, k = model.action_dim, spec.segment_steps
    dims = spec.compare_dims if spec.compare_dims is not None else list(range(model.transition_dim))
    plans = guided_sample_with_grad(model, len(segments), {0: segments[:, 0, a:]}, net, spec.guidance,
                                    spec.backprop_steps, generator)
    return loss_fn(plans[:, :k, dims], segments[:, :, dims]), plans
