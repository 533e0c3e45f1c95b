"""Loader: Minari dataset -> normalised contiguous [action | observation] windows."""

import minari
import numpy as np
import pytest
from tolerances import assert_float32_close

from rrf_ray.data.minari_io import DatasetError, dataset_dir
from rrf_ray.data.windows import Normalizer, episode_rows, load_windows, split_episodes
from rrf_ray.maze2d.datasets import generate_maze2d
from rrf_ray.maze2d.mazes import Maze
from rrf_ray.maze2d.spec import DataSpec


@pytest.fixture(scope="module")
def root(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    spec = DataSpec(chunk_transitions=2500)
    generate_maze2d(Maze.default("umaze"), None, 5000, seed=0, data=spec, root=root, progress=False)
    generate_maze2d(Maze.default("umaze"), 6, 5000, seed=0, data=spec, root=root, progress=False)
    return root


def test_windows_are_contiguous_and_normalised(root):
    did = "rrf/maze2d-umaze/base-v0"
    w = load_windows(did, horizon=16, stride=3, root=root)
    assert w.transition_dim == 6 and w.action_dim == 2
    assert w.rows.min() >= -1.0 - 1e-6 and w.rows.max() <= 1.0 + 1e-6
    ds = minari.MinariDataset(dataset_dir(did, root) / "data")
    rng = np.random.default_rng(0)
    for i in rng.integers(len(w), size=20):
        window = w.normalizer.unnormalize(w[i])
        ep = ds[int(w.episode_of_window[i])]
        rows = np.concatenate([ep.actions, ep.observations[:-1]], axis=1)
        # find where the window starts in its episode and compare every 3rd step
        start = int(np.argmin(np.abs(rows - window[0]).sum(axis=1)))
        expected = rows[start:start + 16 * 3:3]
        assert_float32_close(window[: len(expected)], expected)  # float32 normalise/unnormalise round trip


def test_short_episodes_are_padded_at_rest(root):
    """Expert windows longer than an episode end resting at the goal with zero action."""
    w = load_windows("rrf/maze2d-umaze/goal6-v0", horizon=64, stride=4, root=root)
    goal_xy = Maze.default("umaze").goal_xy(6)
    raw = w.normalizer.unnormalize(w.batch(np.arange(len(w))))
    assert_float32_close(raw[:, -1, :2], np.zeros_like(raw[:, -1, :2]))  # zero action at the end
    assert np.all(np.linalg.norm(raw[:, -1, 2:4] - goal_xy, axis=1) <= 0.1 + 1e-4)


def test_episode_rows_padding():
    obs = np.arange(12, dtype=float).reshape(3, 4)
    act = np.ones((2, 2))
    rows = episode_rows(obs, act, min_rows=6)
    assert rows.shape == (6, 6)
    np.testing.assert_array_equal(rows[0], [1, 1, 0, 1, 2, 3])
    for r in rows[2:]:
        np.testing.assert_array_equal(r, [0, 0, 8, 9, 10, 11])


def test_heldout_split_is_disjoint_and_shared_normaliser(root):
    did = "rrf/maze2d-umaze/base-v0"
    ds = minari.MinariDataset(dataset_dir(did, root) / "data")
    train, held = split_episodes(ds, "train"), split_episodes(ds, "heldout")
    assert len(held) > 0 and not set(train) & set(held)
    assert len(train) + len(held) == ds.total_episodes
    wt = load_windows(did, 8, root=root, split="train")
    wh = load_windows(did, 8, root=root, split="heldout", normalizer=wt.normalizer)
    assert set(np.unique(wh.episode_of_window)) <= set(held)
    assert not set(np.unique(wt.episode_of_window)) & set(held)
    assert wh.normalizer is wt.normalizer


def test_normalizer_round_trip():
    x = np.random.default_rng(0).normal(size=(100, 6)) * 3 + 1
    for kind in ("minmax", "standard"):
        n = Normalizer.fit(x, kind)
        np.testing.assert_allclose(n.unnormalize(n.normalize(x)), x, rtol=1e-5, atol=1e-5)
        m = Normalizer.from_dict(n.to_dict())
        np.testing.assert_array_equal(m.shift, n.shift)
    n = Normalizer.fit(x, "minmax")
    assert np.isclose(n.normalize(x).min(), -1, atol=1e-5) and np.isclose(n.normalize(x).max(), 1, atol=1e-5)


def test_missing_dataset_names_its_path_and_says_how_to_make_it(tmp_path):
    with pytest.raises(DatasetError, match=r"no Minari dataset 'me/my-data-v0' at .*me/my-data-v0\. Run make-it"):
        load_windows("me/my-data-v0", 8, root=tmp_path, how_to_make="Run make-it")


def test_pad_end_starts_a_window_at_every_step(root):
    did = "rrf/maze2d-umaze/base-v0"
    inside = load_windows(did, horizon=16, stride=4, root=root)
    padded = load_windows(did, horizon=16, stride=4, root=root, pad_end=True, normalizer=inside.normalizer)
    ds = minari.MinariDataset(dataset_dir(did, root) / "data")
    train = split_episodes(ds, "train")
    steps = sum(len(ds[int(i)].observations) for i in train)
    assert len(padded) == steps > len(inside)
    # the last window of an episode starts at its final observation and rests there
    last = padded.normalizer.unnormalize(padded[len(padded) - 1])
    assert_float32_close(last[:, :2], np.zeros_like(last[:, :2]))
    assert_float32_close(last[:, 2:], np.repeat(last[:1, 2:], 16, axis=0))
