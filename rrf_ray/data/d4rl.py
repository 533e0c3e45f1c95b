"""D4RL HDF5 files (what most researchers already have) -> local Minari datasets.

A D4RL MuJoCo file holds flat per-step arrays: `observations`, `actions`, `rewards`,
`terminals` and `timeouts` (and, in some, `next_observations`). An episode ends at a step
whose `terminals` or `timeouts` is set; Minari wants each episode's L actions with its L+1
observations. With `next_observations` the last one comes from there; without it, the
last step of each episode has no successor and is dropped (as D4RL's own
`qlearning_dataset` does). A trailing run with no end flag becomes a truncated episode.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rrf_ray.data.minari_io import DatasetError, dataset_dir, read_metadata, write_dataset

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")
SOURCE_KEY = "rrf_d4rl_source"


@dataclass
class D4RLEpisode:
    observations: np.ndarray  # (L+1, obs_dim)
    actions: np.ndarray  # (L, act_dim)
    rewards: np.ndarray  # (L,)
    terminated: bool
    truncated: bool


def read_d4rl_episodes(path) -> list[D4RLEpisode]:
    """Split a D4RL HDF5 file into episodes; a clear error for a file that is not one."""
    import h5py

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED if k not in f]
            if missing:
                raise DatasetError(f"{path} is not a D4RL dataset file: it has no {', '.join(missing)} "
                                   f"(found: {', '.join(sorted(f.keys()))})")
            data = {k: np.asarray(f[k]) for k in REQUIRED}
            next_obs = np.asarray(f["next_observations"]) if "next_observations" in f else None
    except OSError as e:
        raise DatasetError(f"{path} is not a readable HDF5 file: {e}") from None
    n = len(data["observations"])
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{path}: arrays of different lengths {lengths}")
    ends = np.flatnonzero(data["terminals"].astype(bool) | data["timeouts"].astype(bool))
    bounds = [(s, e + 1) for s, e in zip(np.r_[0, ends[:-1] + 1], ends)]
    if not len(ends) or ends[-1] != n - 1:
        bounds.append((int(ends[-1]) + 1 if len(ends) else 0, n))  # trailing, unfinished run
    episodes = []
    for start, stop in bounds:
        terminated = bool(data["terminals"][stop - 1])
        truncated = not terminated
        if next_obs is not None:
            obs = np.concatenate([data["observations"][start:stop], next_obs[stop - 1:stop]])
            acts, rews = data["actions"][start:stop], data["rewards"][start:stop]
        else:  # the last step has no successor observation: drop it
            obs = data["observations"][start:stop]
            acts, rews = data["actions"][start:stop - 1], data["rewards"][start:stop - 1]
        if len(acts) == 0:
            continue
        episodes.append(D4RLEpisode(obs, acts, rews, terminated, truncated))
    if not episodes:
        raise DatasetError(f"{path} holds no episode with at least one transition")
    return episodes


def convert_d4rl_hdf5(path, dataset_id: str, env_id: str, root=None, overwrite: bool = False) -> str:
    """Write the episodes of D4RL file `path` as the local Minari dataset `dataset_id` (for `env_id`)."""
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    path = Path(path).resolve()
    final = dataset_dir(dataset_id, root)
    source = {"file": str(path), "size": path.stat().st_size if path.exists() else None, "env": env_id}
    if final.exists():
        meta = read_metadata(dataset_id, root) or {}
        if meta.get(SOURCE_KEY) == source:
            return dataset_id
        if not overwrite:
            raise DatasetError(f"{final} already holds dataset {dataset_id!r} made from something else; "
                               "pass --overwrite to replace it")
    episodes = read_d4rl_episodes(path)
    try:
        env = gym.make(env_id)
    except Exception as e:  # gymnasium raises several types for unknown or uninstallable ids
        raise DatasetError(f"cannot make environment {env_id!r}: {e}") from None
    obs_dim, act_dim = env.observation_space.shape, env.action_space.shape
    if episodes[0].observations.shape[1:] != obs_dim or episodes[0].actions.shape[1:] != act_dim:
        raise DatasetError(f"{path}: observations {episodes[0].observations.shape[1:]} and actions "
                           f"{episodes[0].actions.shape[1:]} do not fit {env_id} ({obs_dim}, {act_dim})")
    buffers = [EpisodeBuffer(observations=e.observations.astype(np.float64), actions=e.actions.astype(np.float32),
                             rewards=e.rewards.astype(np.float64),
                             terminations=np.r_[np.zeros(len(e.actions) - 1, bool), e.terminated],
                             truncations=np.r_[np.zeros(len(e.actions) - 1, bool), e.truncated])
               for e in episodes]
    try:
        write_dataset(dataset_id, buffers, env, root, metadata={SOURCE_KEY: source},
                      algorithm_name="D4RL (converted by rrf_ray)",
                      description=f"Converted from the D4RL file {path.name} by python -m rrf_ray.data d4rl-hdf5.")
    finally:
        env.close()
    return dataset_id
