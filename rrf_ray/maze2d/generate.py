"""Maze2D trajectories (docs/datasets.md): D4RL's procedure with continuous starts and goals.

`generate_chunk` is the unit of work of one Ray task: a fixed number of transitions from
its own seed. A dataset is a fixed list of chunks (their count depends only on the size),
so the result depends on the seed alone, not on how many workers ran it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rrf_ray.maze2d.controller import WaypointController
from rrf_ray.maze2d.mazes import Maze
from rrf_ray.maze2d.pointmaze import place_ball, set_goal, shared_env
from rrf_ray.maze2d.spec import DataSpec


@dataclass
class Episode:
    """One episode: observations [x, y, vx, vy] (L+1 rows), actions (L rows), and its goal
    ((2,), or (L+1, 2) per step for a base episode that runs through several goals)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: bool
    goal: np.ndarray

    def __len__(self) -> int:
        return len(self.actions)


@dataclass
class Chunk:
    episodes: list[Episode]
    transitions: int
    dropped_episodes: int  # expert episodes that timed out before the goal


def sample_point(maze: Maze, rng: np.random.Generator, margin: float) -> np.ndarray:
    """Uniform over free cells, then uniform inside the cell (keeping `margin` from its edges)."""
    return maze.rowcol_to_xy(maze.sample_rowcol(rng, margin))


class _Roller:
    """Steps a PointMaze with the noisy waypoint controller, recording one episode at a time."""

    _NOISE_BLOCK = 4096

    def __init__(self, maze: Maze, spec: DataSpec, rng: np.random.Generator, noise: float):
        self.maze, self.spec, self.rng, self.noise = maze, spec, rng, noise
        self.env = shared_env(maze)
        self.inner = self.env.unwrapped
        self.controller = WaypointController(
            maze, spec.p_gain, spec.d_gain, spec.q_gamma, spec.q_sweeps, spec.waypoint_radius,
            spec.waypoint_jitter, rng
        )
        self._noise = np.zeros((0, 2))
        self._k = 0

    def start(self, xy, goal) -> np.ndarray:
        obs = place_ball(self.env, xy, goal, seed=int(self.rng.integers(2**31)))
        self.controller.set_goal(goal, obs[:2])
        return obs

    def new_goal(self, goal, obs) -> None:
        set_goal(self.env, goal)
        self.controller.set_goal(goal, obs[:2])

    def _next_noise(self) -> tuple[float, float]:
        # Drawn in blocks: one RNG call per step costs as much as the controller.
        if self._k == len(self._noise):
            self._noise = self.rng.normal(0.0, self.noise, size=(self._NOISE_BLOCK, 2)).tolist()
            self._k = 0
        self._k += 1
        return self._noise[self._k - 1]

    def step(self, obs):
        ax, ay = self.controller.action(obs[:2], obs[2:])
        if self.noise > 0:
            nx, ny = self._next_noise()
            ax, ay = ax + nx, ay + ny
        action = np.array([min(1.0, max(-1.0, ax)), min(1.0, max(-1.0, ay))])
        out, reward, _, _, _ = self.inner.step(action)
        return action, out["observation"], float(reward)

def _episode(obs, acts, rews, terminated, goal) -> Episode:
    return Episode(np.array(obs), np.array(acts), np.array(rews), terminated, np.asarray(goal, dtype=np.float64))


def generate_chunk(maze: Maze, goal_rowcol, n_transitions: int, seed, spec: DataSpec,
                   noise: float | None = None) -> Chunk:
    """Episodes of `n_transitions` steps in total (expert: at least that many).

    goal_rowcol None: base data, a random goal re-drawn when reached or after a timeout,
    a new episode at every goal change (or, with `base_split_at_goals` off, one continuous
    episode per chunk, as D4RL's Maze2D stream). Otherwise expert data: random starts, the episode
    ends within `expert_goal_radius` of the goal (or is dropped after `expert_max_steps`).
    """
    rng = np.random.default_rng(seed)
    roller = _Roller(maze, spec, rng, spec.action_noise if noise is None else noise)
    if goal_rowcol is None:
        return _base_chunk(roller, n_transitions)
    return _expert_chunk(roller, maze.rowcol_to_xy(goal_rowcol), n_transitions)


def _far_point(roller: _Roller, other, min_dist: float) -> np.ndarray:
    while True:
        p = sample_point(roller.maze, roller.rng, roller.spec.cell_margin)
        if math.dist(p, other) > min_dist:
            return p


def _base_chunk(roller: _Roller, n: int) -> Chunk:
    spec = roller.spec
    start = sample_point(roller.maze, roller.rng, spec.cell_margin)
    goal = _far_point(roller, start, spec.base_goal_radius)
    obs = roller.start(start, goal)
    episodes, ep_obs, ep_act, ep_rew, ep_goals = [], [obs], [], [], [goal]
    since_goal = 0
    for produced in range(1, n + 1):
        action, obs, reward = roller.step(obs)
        ep_obs.append(obs)
        ep_act.append(action)
        ep_rew.append(reward)
        ep_goals.append(goal)
        since_goal += 1
        reached = math.dist(obs[:2], goal) <= spec.base_goal_radius
        if reached or since_goal >= spec.base_goal_timeout or produced == n:
            if spec.base_split_at_goals or produced == n:
                goals = np.asarray(ep_goals) if not spec.base_split_at_goals else goal
                episodes.append(_episode(ep_obs, ep_act, ep_rew, False, goals))
            if produced == n:
                break
            goal = _far_point(roller, obs[:2], spec.base_goal_radius)
            roller.new_goal(goal, obs)
            since_goal = 0
            if spec.base_split_at_goals:
                ep_obs, ep_act, ep_rew, ep_goals = [obs], [], [], [goal]
            else:
                ep_goals[-1] = goal  # the step that reached a goal is where the next one starts
    return Chunk(episodes, n, 0)


def _expert_chunk(roller: _Roller, goal, n: int) -> Chunk:
    spec = roller.spec
    episodes, produced, dropped = [], 0, 0
    while produced < n:
        start = _far_point(roller, goal, spec.base_goal_radius)
        obs = roller.start(start, goal)
        ep_obs, ep_act, ep_rew = [obs], [], []
        for _ in range(spec.expert_max_steps):
            action, obs, reward = roller.step(obs)
            ep_obs.append(obs)
            ep_act.append(action)
            ep_rew.append(reward)
            if math.dist(obs[:2], goal) <= spec.expert_goal_radius:
                episodes.append(_episode(ep_obs, ep_act, ep_rew, True, goal))
                produced += len(ep_act)
                break
        else:
            dropped += 1
            if dropped > 50 and dropped > 10 * len(episodes):
                raise RuntimeError(
                    f"maze {roller.maze.name!r}: the controller reached goal {tuple(goal)} in only "
                    f"{len(episodes)} of {len(episodes) + dropped} episodes; check the goal and controller gains"
                )
    return Chunk(episodes, produced, dropped)
