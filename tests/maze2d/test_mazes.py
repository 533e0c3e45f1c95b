import numpy as np
import pytest

from rrf_ray.maze2d.mazes import DEFAULT_GOALS, DEFAULT_LAYOUTS, Maze, MazeError
from rrf_ray.maze2d.pointmaze import make_env

MAZES = list(DEFAULT_LAYOUTS)


@pytest.mark.parametrize("name", MAZES)
def test_rowcol_xy_round_trip_every_free_cell(name):
    maze = Maze.default(name)
    cells = np.array(maze.free_cells, dtype=float)
    xy = maze.rowcol_to_xy(cells)
    np.testing.assert_allclose(maze.xy_to_rowcol(xy), cells, atol=1e-12)
    for cell, p in zip(maze.free_cells, xy):
        assert maze.cell_of_xy(p) == cell
        # points anywhere inside the cell map back to it
        for dr, dc in [(-0.45, -0.45), (0.45, 0.45), (0.3, -0.2)]:
            assert maze.cell_of_xy(maze.rowcol_to_xy((cell[0] + dr, cell[1] + dc))) == cell


@pytest.mark.parametrize("name", MAZES)
def test_conversion_agrees_with_pointmaze(name):
    """Our one conversion is PointMaze's own frame, checked against the real environment."""
    maze = Maze.default(name)
    env = make_env(maze)
    try:
        inner = env.unwrapped.maze
        for cell in maze.free_cells:
            np.testing.assert_allclose(maze.rowcol_to_xy(cell), inner.cell_rowcol_to_xy(np.array(cell)))
    finally:
        env.close()


def test_umaze_goal3_is_at_1_1():
    np.testing.assert_allclose(Maze.default("umaze").goal_xy(3), [1.0, 1.0])


@pytest.mark.parametrize("name", MAZES)
def test_default_goals_are_free(name):
    maze = Maze.default(name)
    assert len(maze.goals) == 8 == len(DEFAULT_GOALS[name])
    for k in range(1, 9):
        assert maze.is_free(*maze.cell_of(maze.goal(k)))


def test_goal_in_wall_names_maze_and_goal():
    with pytest.raises(MazeError, match=r"maze 'umaze' goal 2 .*inside a wall"):
        Maze("umaze", tuple(DEFAULT_LAYOUTS["umaze"]), ((1, 1), (2, 1)))


def test_goal_outside_map_names_maze_and_goal():
    with pytest.raises(MazeError, match=r"maze 'open' goal 1 .*outside"):
        Maze("open", tuple(DEFAULT_LAYOUTS["open"]), ((7, 1),))


def test_goal_index_out_of_range():
    with pytest.raises(MazeError, match="goals 1..8, not goal 9"):
        Maze.default("medium").goal(9)


def test_unknown_maze():
    with pytest.raises(MazeError, match="unknown maze 'spiral'"):
        Maze.default("spiral")


def test_bad_layouts():
    with pytest.raises(MazeError, match="same length"):
        Maze("x", ("###", "#O"), ())
    with pytest.raises(MazeError, match="only use"):
        Maze("x", ("###", "#X#", "###"), ())


def test_make_env_leaves_no_temp_xml(tmp_path):
    env = make_env(Maze.default("umaze"))
    try:
        path = env.unwrapped.tmp_xml_file_path
        import os
        assert not os.path.exists(path), "gymnasium-robotics' temp MJCF must be cleaned up"
    finally:
        env.close()
