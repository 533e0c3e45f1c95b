"""Receding-horizon rollouts in the real PointMaze: plan from the current state, execute the first action, re-plan.

Plans are not rollouts (thesis Section 3.3): a plan carries the diffuser's model errors, a
rollout the environment's true dynamics. Every method is judged by rollouts: the experts are
rollouts of the base guided by the true reward, and each method's behaviour is its rollouts
from the evaluation start points. A batch of rollouts steps one environment per rollout and
plans for all of them in one reverse chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from rrf_ray.diffusion.checkpoint import TrainedDiffuser
from rrf_ray.diffusion.model import RewardFn
from rrf_ray.diffusion.spec import GuidanceSpec
from rrf_ray.maze2d.mazes import Maze
from rrf_ray.maze2d.pointmaze import make_env, place_ball


class Actor(Protocol):
    """Actions (B, 2) for observations (B, 4) [x, y, vx, vy]."""

    def __call__(self, obs: np.ndarray) -> np.ndarray: ...


class DiffuserActor:
    """The first action of a (guided) plan from each current state: Janner's receding-horizon control."""

    def __init__(self, diffuser: TrainedDiffuser, guide: RewardFn | None = None,
                 guidance: GuidanceSpec | None = None, seed: int = 0):
        self.diffuser, self.guide, self.guidance = diffuser, guide, guidance
        self.generator = torch.Generator(device=diffuser.device).manual_seed(seed)
        self.last_plans: np.ndarray | None = None

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        d = self.diffuser
        cond = {0: d.normalize_obs(obs)}
        d.model.eval()
        x = d.model.sample(len(obs), cond, self.guide, self.guidance, generator=self.generator).x
        self.last_plans = d.unnormalize(x)
        return self.last_plans[:, 0, :d.model.action_dim]


@dataclass
class Rollouts:
    """observations (B, L+1, 4) and actions (B, L, 2) of B rollouts of L steps, and their start points."""

    observations: np.ndarray
    actions: np.ndarray
    starts: np.ndarray  # (B, 2) (row, col) maze units

    @property
    def positions(self) -> np.ndarray:
        return self.observations[..., :2]


def rollout(maze: Maze, actor: Actor, starts_rowcol, steps: int, replan_every: int = 1, seed: int = 0,
            progress: str | None = None) -> Rollouts:
    """One rollout per start point (row, col), `steps` environment steps each, actions clipped to [-1, 1].

    The actor is asked every `replan_every` steps and its action held in between.
    """
    starts_rowcol = np.asarray(starts_rowcol, dtype=np.float64).reshape(-1, 2)
    envs = [make_env(maze) for _ in starts_rowcol]
    try:
        xy = maze.rowcol_to_xy(starts_rowcol)
        obs = np.stack([place_ball(env, p, p, seed=seed * 100_003 + i) for i, (env, p) in enumerate(zip(envs, xy))])
        observations, actions = [obs], []
        action = None
        for k in tqdm(range(steps), desc=progress, disable=progress is None, mininterval=2.0, leave=False):
            if k % replan_every == 0:
                action = np.clip(np.asarray(actor(obs), dtype=np.float64), -1.0, 1.0)
            obs = np.stack([env.unwrapped.step(a)[0]["observation"] for env, a in zip(envs, action)])
            observations.append(obs)
            actions.append(action)
    finally:
        for env in envs:
            env.close()
    return Rollouts(np.stack(observations, axis=1), np.stack(actions, axis=1), starts_rowcol)


def start_table(starts, per_start: int) -> np.ndarray:
    """Each start point repeated `per_start` times (rollouts of one start are consecutive)."""
    return np.repeat(np.asarray(starts, dtype=np.float64).reshape(-1, 2), per_start, axis=0)
