"""Behaviour cloning, the imitation baseline: an MLP policy a = pi(s) regressed on the experts' (s, a) pairs."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rrf_ray.irl.spec import BCSpec


class BCPolicy(nn.Module):
    """pi(s) on standardised observations, tanh to PointMaze's action box [-1, 1]."""

    def __init__(self, obs_dim: int, action_dim: int, hidden, obs_mean, obs_std):
        super().__init__()
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers += [nn.Linear(width, action_dim), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(obs_std, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net((obs - self.mean) / self.std)

    @torch.no_grad()
    def __call__(self, obs) -> np.ndarray:  # the rollouts' Actor protocol on numpy observations
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32))
        return super().__call__(x).numpy().astype(np.float64)


def train_bc(episodes, spec: BCSpec, seed: int = 0) -> tuple[BCPolicy, float]:
    """Fit pi on every (s_t, a_t) of the expert episodes; returns the policy and its final training MSE."""
    obs = np.concatenate([o[:-1] for o, _ in episodes]).astype(np.float32)
    act = np.concatenate([a for _, a in episodes]).astype(np.float32)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    policy = BCPolicy(obs.shape[1], act.shape[1], spec.hidden, obs.mean(0), np.maximum(obs.std(0), 1e-6))
    optimizer = torch.optim.Adam(policy.parameters(), lr=spec.learning_rate)
    obs_t, act_t = torch.from_numpy(obs), torch.from_numpy(act)
    losses = []
    for _ in range(spec.steps):
        idx = torch.from_numpy(rng.integers(len(obs), size=min(spec.batch_size, len(obs))))
        loss = ((policy.forward(obs_t[idx]) - act_t[idx]) ** 2).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"behaviour cloning loss is {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return policy.eval(), float(np.mean(losses[-50:]))
