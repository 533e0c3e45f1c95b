"""Synthetic "diffusion models" with a known relative reward, for the reward-extraction tests.

Both take the step mean = decay * x, plus, for the expert, exactly grad phi(x) for the
quadratic potential phi(x) = -0.5 (x - c)^T A (x - c) (x flattened). So the expert's
step minus the base's is grad phi, and the relative reward is phi up to a constant.
"""

import numpy as np
import torch
from torch import nn


class Potential:
    def __init__(self, dim: int, seed: int = 0, scale: float = 0.15):
        rng = np.random.default_rng(seed)
        m = rng.normal(size=(dim, dim))
        self.A = torch.tensor(scale * (m @ m.T / dim + np.eye(dim)), dtype=torch.float32)
        self.c = torch.tensor(rng.uniform(-0.5, 0.5, size=dim), dtype=torch.float32)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        d = x.flatten(1) - self.c
        return -0.5 * ((d @ self.A) * d).sum(-1)

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        return (-(x.flatten(1) - self.c) @ self.A).view_as(x)


class AnalyticModel(nn.Module):
    def __init__(self, horizon=4, transition_dim=2, action_dim=0, n_timesteps=10, potential=None,
                 decay=0.9, std=0.3, poison=False):
        super().__init__()
        self.horizon, self.transition_dim, self.action_dim = horizon, transition_dim, action_dim
        self.n_timesteps, self.potential, self.decay, self.std, self.poison = n_timesteps, potential, decay, std, poison

    def posterior(self, x, t):
        mean = self.decay * x
        if self.potential is not None:
            mean = mean + self.potential.grad(x)
        if self.poison:
            mean = mean * float("nan")
        std = torch.where((t > 0).view(-1, 1, 1), torch.full_like(t, self.std, dtype=x.dtype).view(-1, 1, 1),
                          torch.zeros(len(t), 1, 1, dtype=x.dtype, device=x.device))
        return mean, std

    def add_noise(self, x0, noise, t):
        w = (t.float() / self.n_timesteps).view(-1, 1, 1)
        return (1 - w) * x0 + w * noise
