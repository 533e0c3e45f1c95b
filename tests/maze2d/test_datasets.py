"""Maze2D datasets made by real Ray tasks, stored and read back as real Minari datasets."""

import json
import math

import minari
import numpy as np
import pytest

from rrf_ray.data.minari_io import HELDOUT_KEY, DatasetError, dataset_dir, read_metadata
from rrf_ray.maze2d.datasets import GENERATION_KEY, generate_maze2d
from rrf_ray.maze2d.mazes import DEFAULT_LAYOUTS, Maze
from rrf_ray.maze2d.spec import DataSpec

SMALL = DataSpec(chunk_transitions=2500)


def _episodes(did, root):
    return list(minari.MinariDataset(dataset_dir(did, root) / "data").iterate_episodes())


@pytest.mark.parametrize("name", list(DEFAULT_LAYOUTS))
def test_base_dataset_visits_every_free_cell(ray_local, tmp_path, name):
    maze = Maze.default(name)
    did = generate_maze2d(maze, None, 20_000, seed=0, data=SMALL, root=tmp_path, workers=2, progress=False)
    assert did == f"rrf/maze2d-{name}/base-v0"
    episodes = _episodes(did, tmp_path)
    assert sum(len(e.actions) for e in episodes) == 20_000
    visited = {maze.cell_of_xy(p) for e in episodes for p in e.observations[:, :2]}
    assert visited == set(maze.free_cells)
    # episodes split at each goal change: one goal per episode, and an episode starts where the
    # last one ended, except at the start of a chunk (a fresh start, at rest)
    joins = 0
    for a, b in zip(episodes, episodes[1:]):
        assert np.all(a.infos["goal"] == a.infos["goal"][0])
        if np.any(b.observations[0, 2:] != 0):
            np.testing.assert_array_equal(a.observations[-1], b.observations[0])
            joins += 1
    assert joins >= len(episodes) - 1 - 20_000 // SMALL.chunk_transitions


def test_continuous_base_data_is_one_episode_per_chunk(ray_local, tmp_path):
    """base_split_at_goals off: D4RL's stream, one episode per chunk running through many goals,
    each step labelled with the goal the controller was heading for."""
    maze = Maze.default("umaze")
    data = DataSpec(chunk_transitions=2500, base_split_at_goals=False)
    did = generate_maze2d(maze, None, 10_000, seed=0, data=data, root=tmp_path, workers=2, progress=False)
    episodes = _episodes(did, tmp_path)
    assert [len(e.actions) for e in episodes] == [2500] * 4
    for e in episodes:
        goals = np.unique(e.infos["goal"], axis=0)
        assert len(goals) >= 5, "a continuous episode should pass through several goals"
        # no resting: the ball keeps moving through goal changes
        speed = np.linalg.norm(e.observations[100:, 2:], axis=1)
        assert np.mean(speed < 0.05) < 0.05


def test_expert_dataset_acceptance(ray_local, tmp_path, monkeypatch):
    """The issue's acceptance command, as a test: umaze goal 3, 20k transitions."""
    maze = Maze.default("umaze")
    did = generate_maze2d(maze, 3, 20_000, seed=0, data=DataSpec(), root=tmp_path, workers=2, progress=False)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = minari.load_dataset("rrf/maze2d-umaze/goal3-v0")
    assert ds.total_steps >= 20_000
    for ep in ds.iterate_episodes():
        assert math.dist(ep.observations[-1, :2], (1.0, 1.0)) <= 0.5
        assert ep.terminations[-1] and not ep.terminations[:-1].any()
    meta = ds.storage.metadata
    held = meta[HELDOUT_KEY]
    assert abs(len(held) - 0.1 * ds.total_episodes) <= 1
    assert meta[GENERATION_KEY]["goal_xy"] == [1.0, 1.0]
    assert meta[GENERATION_KEY]["seed"] == 0
    env = ds.recover_environment()  # the real PointMaze with this layout
    assert env.unwrapped.maze.maze_map == maze.maze_map
    env.close()


def test_same_seed_and_workers_give_identical_data(ray_local, tmp_path):
    maze = Maze.default("open")
    roots = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for root, workers in zip(roots, [2, 2, 1]):
        generate_maze2d(maze, 4, 6000, seed=7, data=SMALL, root=root, workers=workers, progress=False)
    a, b, c = (_episodes("rrf/maze2d-open/goal4-v0", r) for r in roots)
    assert len(a) == len(b) == len(c)
    for x, y, z in zip(a, b, c):
        np.testing.assert_array_equal(x.observations, y.observations)
        np.testing.assert_array_equal(x.actions, y.actions)
        np.testing.assert_array_equal(x.observations, z.observations)  # worker count does not matter
    other = tmp_path / "d"
    generate_maze2d(maze, 4, 6000, seed=8, data=SMALL, root=other, workers=2, progress=False)
    d = _episodes("rrf/maze2d-open/goal4-v0", other)
    assert not np.array_equal(a[0].observations, d[0].observations)


def test_rerun_reuses_and_other_spec_is_refused(ray_local, tmp_path):
    maze = Maze.default("umaze")
    generate_maze2d(maze, 1, 3000, seed=0, data=SMALL, root=tmp_path, progress=False)
    data_file = dataset_dir("rrf/maze2d-umaze/goal1-v0", tmp_path) / "data" / "main_data.hdf5"
    stamp = data_file.stat().st_mtime_ns
    generate_maze2d(maze, 1, 3000, seed=0, data=SMALL, root=tmp_path, progress=False)
    assert data_file.stat().st_mtime_ns == stamp, "same spec must reuse the dataset"
    with pytest.raises(DatasetError, match=r"different spec \(differs in: seed\).*--overwrite"):
        generate_maze2d(maze, 1, 3000, seed=1, data=SMALL, root=tmp_path, progress=False)
    generate_maze2d(maze, 1, 3000, seed=1, data=SMALL, root=tmp_path, overwrite=True, progress=False)
    assert read_metadata("rrf/maze2d-umaze/goal1-v0", tmp_path)[GENERATION_KEY]["seed"] == 1
    leftovers = [p.name for p in dataset_dir("rrf/maze2d-umaze/goal1-v0", tmp_path).parent.iterdir()
                 if p.name.startswith(".")]
    assert leftovers == []


def test_crash_leaves_no_trusted_dataset(ray_local, tmp_path):
    """A generation that fails part-way leaves nothing at the final path."""
    maze = Maze("umaze", tuple(DEFAULT_LAYOUTS["umaze"]), ((1, 1),))
    # A controller that cannot move never reaches the goal: the chunk task raises.
    stuck = DataSpec(chunk_transitions=500, p_gain=1e-9, d_gain=0.0, action_noise=0.0, expert_max_steps=5)
    with pytest.raises(Exception, match="reached goal"):
        generate_maze2d(maze, 1, 1000, seed=0, data=stuck, root=tmp_path, progress=False)
    assert not dataset_dir("rrf/maze2d-umaze/goal1-v0", tmp_path).exists()
    assert [p for p in (tmp_path / "rrf" / "maze2d-umaze").iterdir()] == []


def test_metadata_is_plain_json(ray_local, tmp_path):
    maze = Maze.default("umaze")
    generate_maze2d(maze, None, 2000, seed=0, data=SMALL, root=tmp_path, progress=False)
    meta = json.loads((dataset_dir("rrf/maze2d-umaze/base-v0", tmp_path) / "data" / "metadata.json").read_text())
    assert meta[GENERATION_KEY]["goal_index"] is None
    assert meta[GENERATION_KEY]["transitions"] == 2000
