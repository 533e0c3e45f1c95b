"""Receding-horizon rollouts in gymnasium's MuJoCo v5 environments, vectorised.

Every environment step: condition the diffuser on the current observation by inpainting,
sample a plan (reward-guided when a guide is given), execute the plan's first action,
re-plan. All environments of a batch are planned together; an environment that has ended
stops counting (its later steps are ignored). Noise comes from a generator seeded per
(seed, step), so a guidance scale of 0 reproduces the unsteered rollouts exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rrf_ray.diffusion.spec import GuidanceSpec
from rrf_ray.metrics.intervals import standard_error


def d4rl_score(returns, ref_min: float, ref_max: float) -> np.ndarray:
    """D4RL normalised score 100 (R - min) / (max - min) (docs/locomotion.md)."""
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


@dataclass
class RolloutResult:
    returns: np.ndarray  # (n_envs,) undiscounted returns
    lengths: np.ndarray  # (n_envs,) steps until termination, truncation or max_steps
    scores: np.ndarray  # (n_envs,) D4RL-normalised

    def summary(self) -> dict:
        return {"score": float(self.scores.mean()), "score_se": standard_error(self.scores),
                "return_mean": float(self.returns.mean()), "length_mean": float(self.lengths.mean()),
                "n_episodes": int(len(self.returns)), "scores": [float(s) for s in self.scores]}


def make_vector_env(env_id: str, n_envs: int):
    import gymnasium as gym

    return gym.vector.SyncVectorEnv([lambda: gym.make(env_id) for _ in range(n_envs)])


def rollout(planner, env_id: str, n_envs: int, max_steps: int, seed: int, ref_scores: tuple[float, float],
            guide=None, guidance: GuidanceSpec | None = None) -> RolloutResult:
    """`planner`: a TrainedDiffuser (plans in environment units from observations)."""
    envs = make_vector_env(env_id, n_envs)
    try:
        obs, _ = envs.reset(seed=[int(seed) * 10_000 + i for i in range(n_envs)])
        low, high = envs.single_action_space.low, envs.single_action_space.high
        a_dim = planner.model.action_dim
        returns = np.zeros(n_envs)
        lengths = np.zeros(n_envs, dtype=np.int64)
        alive = np.ones(n_envs, dtype=bool)
        for step in range(max_steps):
            plans = planner.plan(obs, guide=guide, guidance=guidance, seed=int(seed) * 1_000_003 + step)
            actions = np.clip(plans[:, 0, :a_dim], low, high).astype(envs.single_action_space.dtype)
            obs, reward, terminated, truncated, _ = envs.step(actions)
            returns += np.where(alive, reward, 0.0)
            lengths += alive
            alive &= ~(terminated | truncated)
            if not alive.any():
                break
    finally:
        envs.close()
    return RolloutResult(returns, lengths, d4rl_score(returns, *ref_scores))


def guidance_spec(omega: float, t_stopgrad: int, n_guide_steps: int, scale_grad_by_std: bool,
                  form: str = "janner") -> GuidanceSpec:
    return GuidanceSpec(scale=float(omega), t_stopgrad=int(t_stopgrad), n_guide_steps=n_guide_steps,
                        scale_grad_by_std=scale_grad_by_std, form=form)


def set_threads(threads: int) -> None:
    torch.set_num_threads(max(1, int(threads)))
