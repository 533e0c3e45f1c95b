"""`python -m rrf_ray.data d4rl-hdf5`: a D4RL-layout HDF5 file of real HalfCheetah-v5 steps -> Minari."""

import subprocess
import sys

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from rrf_ray.data.minari_io import DatasetError, dataset_dir
from rrf_ray.data.d4rl import read_d4rl_episodes

LENGTHS = [40, 25, 30]  # the last run has no end flag: a truncated episode


def _write_d4rl_file(path, with_next: bool):
    """Random-policy HalfCheetah-v5 episodes, flattened the way D4RL stores them."""
    env = gym.make("HalfCheetah-v5")
    rng = np.random.default_rng(0)
    cols = {k: [] for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}
    for i, n in enumerate(LENGTHS):
        obs, _ = env.reset(seed=i)
        for t in range(n):
            act = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            nxt, rew, term, _, _ = env.step(act)
            cols["observations"].append(obs)
            cols["next_observations"].append(nxt)
            cols["actions"].append(act)
            cols["rewards"].append(rew)
            cols["terminals"].append(False)
            cols["timeouts"].append(t == n - 1 and i < len(LENGTHS) - 1)
            obs = nxt
    env.close()
    with h5py.File(path, "w") as f:
        for k, v in cols.items():
            if k != "next_observations" or with_next:
                f.create_dataset(k, data=np.asarray(v))
    return {k: np.asarray(v) for k, v in cols.items()}


def convert(*args):
    return subprocess.run([sys.executable, "-m", "rrf_ray.data", "d4rl-hdf5", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_converted_dataset_holds_the_same_steps(tmp_path):
    source = _write_d4rl_file(tmp_path / "cheetah.hdf5", with_next=True)
    r = convert(tmp_path / "cheetah.hdf5", "--id", "d4rl/halfcheetah-test-v0", "--env", "HalfCheetah-v5",
                "--root", tmp_path / "minari")
    assert r.returncode == 0, r.stderr
    ds = minari.MinariDataset(dataset_dir("d4rl/halfcheetah-test-v0", tmp_path / "minari") / "data")
    episodes = list(ds.iterate_episodes())
    assert [len(e.actions) for e in episodes] == LENGTHS
    assert [bool(e.truncations[-1]) for e in episodes] == [True, True, True]  # timeouts, then the unfinished run
    np.testing.assert_allclose(np.concatenate([e.observations[:-1] for e in episodes]), source["observations"])
    np.testing.assert_allclose(episodes[0].observations[-1], source["next_observations"][LENGTHS[0] - 1])
    np.testing.assert_allclose(np.concatenate([e.rewards for e in episodes]), source["rewards"])
    assert ds.spec.env_spec.id == "HalfCheetah-v5"
    # converting the same file again reuses it; another file under the same id is refused
    assert convert(tmp_path / "cheetah.hdf5", "--id", "d4rl/halfcheetah-test-v0", "--env", "HalfCheetah-v5",
                   "--root", tmp_path / "minari").returncode == 0
    _write_d4rl_file(tmp_path / "other.hdf5", with_next=False)
    r = convert(tmp_path / "other.hdf5", "--id", "d4rl/halfcheetah-test-v0", "--env", "HalfCheetah-v5",
                "--root", tmp_path / "minari")
    assert r.returncode == 2 and "--overwrite" in r.stderr


def test_without_next_observations_each_episode_drops_its_last_step(tmp_path):
    source = _write_d4rl_file(tmp_path / "cheetah.hdf5", with_next=False)
    episodes = read_d4rl_episodes(tmp_path / "cheetah.hdf5")
    assert [len(e.actions) for e in episodes] == [n - 1 for n in LENGTHS]
    np.testing.assert_array_equal(episodes[1].observations, source["observations"][40:65])


@pytest.mark.parametrize("problem, message", [("missing_key", "has no timeouts"), ("wrong_env", "do not fit")])
def test_bad_input_exits_2_saying_what_is_wrong(tmp_path, problem, message):
    _write_d4rl_file(tmp_path / "cheetah.hdf5", with_next=True)
    env = "HalfCheetah-v5"
    if problem == "missing_key":
        with h5py.File(tmp_path / "cheetah.hdf5", "a") as f:
            del f["timeouts"]
    else:
        env = "Hopper-v5"
    r = convert(tmp_path / "cheetah.hdf5", "--id", "d4rl/x-v0", "--env", env, "--root", tmp_path / "minari")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    with pytest.raises(DatasetError, match="does not exist"):
        read_d4rl_episodes(tmp_path / "nothing.hdf5")
