import math

import numpy as np
import pytest

from rrf_ray.maze2d.controller import next_cell_table
from rrf_ray.maze2d.generate import _Roller, sample_point
from rrf_ray.maze2d.mazes import DEFAULT_LAYOUTS, Maze
from rrf_ray.maze2d.spec import DataSpec


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


@pytest.mark.parametrize("name", ["medium", "large"])
def test_jittered_controller_covers_cells_and_still_reaches_goals(name):
    """waypoint_jitter spreads the routes over each cell (more distinct 0.1-unit squares visited)
    without costing the controller its goals."""
    maze = Maze.default(name)
    squares, reached = {}, {}
    for jitter in (0.0, 0.35):
        spec = DataSpec(waypoint_jitter=jitter)
        rng = np.random.default_rng(7)
        roller = _Roller(maze, spec, rng, noise=0.0)
        visited, hits = set(), 0
        for _ in range(20):
            goal = sample_point(maze, rng, spec.cell_margin)
            obs = roller.start(sample_point(maze, rng, spec.cell_margin), goal)
            for _ in range(spec.expert_max_steps):
                _, obs, _ = roller.step(obs)
                visited.add((round(obs[0] * 10), round(obs[1] * 10)))
                if math.dist(obs[:2], goal) <= spec.expert_goal_radius:
                    hits += 1
                    break
        squares[jitter], reached[jitter] = len(visited), hits
    assert reached[0.35] >= 19, reached
    assert squares[0.35] > 1.2 * squares[0.0], squares


def test_unjittered_data_keeps_its_fingerprint():
    """A field added later, at the value that reproduces older data, leaves dataset and artifact keys as they were."""
    assert "waypoint_jitter" not in DataSpec().fingerprint()
    assert DataSpec(waypoint_jitter=0.2).fingerprint()["waypoint_jitter"] == 0.2
