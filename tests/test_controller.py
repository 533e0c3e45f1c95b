import math

import numpy as np
import pytest

from rrf_ray.config import DataSpec
from rrf_ray.data.controller import next_cell_table
from rrf_ray.data.maze2d import _Roller, sample_point
from rrf_ray.mazes import DEFAULT_LAYOUTS, Maze


@pytest.mark.parametrize("name", list(DEFAULT_LAYOUTS))
def test_noiseless_controller_reaches_random_goals(name):
    """>= 95% of random continuous goals reached from random starts within the episode limit."""
    maze, spec = Maze.default(name), DataSpec()
    rng = np.random.default_rng(123)
    roller = _Roller(maze, spec, rng, noise=0.0)
    trials, reached = 40, 0
    for _ in range(trials):
        start = sample_point(maze, rng, spec.cell_margin)
        goal = sample_point(maze, rng, spec.cell_margin)
        obs = roller.start(start, goal)
        for _ in range(spec.expert_max_steps):
            _, obs, _ = roller.step(obs)
            if math.dist(obs[:2], goal) <= spec.expert_goal_radius:
                reached += 1
                break
    assert reached / trials >= 0.95, f"{name}: reached {reached}/{trials}"


def test_q_iteration_moves_along_shortest_paths():
    maze = Maze.default("umaze")
    table = next_cell_table(maze, (3, 1))
    # From the top-left corner the only way round the U is right, down the side, then left.
    path, cell = [], (1, 1)
    while cell != (3, 1):
        cell = table[cell]
        path.append(cell)
    assert path == [(1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]
