"""Real gymnasium-robotics PointMaze environments built from a `Maze`, without their litter.

gymnasium-robotics writes a temporary MJCF file per environment and never deletes it;
MuJoCo has parsed it by the time the constructor returns, so we remove it at once.
"""

from __future__ import annotations

import contextlib
import io
import os

import gymnasium as gym
import numpy as np

from rrf_ray.maze2d.mazes import Maze

ENV_ID = "PointMaze_UMaze-v3"  # any PointMaze id: the layout comes from `maze_map`


def _register() -> None:
    # gymnasium_robotics prints an unrelated Adroit notice on import; keep our CLIs quiet.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics
    gym.register_envs(gymnasium_robotics)


def make_env(maze: Maze) -> gym.Env:
    """A continuing-task PointMaze with this maze's layout; wrappers kept so `env.spec` is complete."""
    _register()
    env = gym.make(ENV_ID, maze_map=maze.maze_map, continuing_task=True, reset_target=False,
                   max_episode_steps=None)
    xml = getattr(env.unwrapped, "tmp_xml_file_path", None)
    if xml and os.path.exists(xml):
        os.remove(xml)
    return env


_SHARED: dict[tuple[str, ...], gym.Env] = {}


def shared_env(maze: Maze) -> gym.Env:
    """One env per layout per process: Ray reuses worker processes, and building a MuJoCo
    model costs as much as thousands of steps. Callers reset it before use and don't close it."""
    if maze.layout not in _SHARED:
        _SHARED[maze.layout] = make_env(maze)
    return _SHARED[maze.layout]


def place_ball(env: gym.Env, xy, goal_xy, seed: int) -> np.ndarray:
    """Reset, then put the ball at rest at `xy` with the env's goal at `goal_xy`; returns [x, y, vx, vy]."""
    env.reset(seed=seed)
    set_goal(env, goal_xy)
    point = env.unwrapped.point_env
    point.set_state(np.asarray(xy, dtype=np.float64), np.zeros(2))
    return np.concatenate([point.data.qpos, point.data.qvel]).astype(np.float64)


def set_goal(env: gym.Env, goal_xy) -> None:
    """Move the env's goal (and its marker) so its reward and `desired_goal` agree with ours."""
    inner = env.unwrapped
    inner.goal = np.asarray(goal_xy, dtype=np.float64).copy()
    inner.update_target_site_pos()
