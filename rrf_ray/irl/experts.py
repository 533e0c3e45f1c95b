"""Expert demonstrations: rollouts of the base guided by the true reward, as a Minari dataset; K-step segments.

The experts are receding-horizon rollouts (Ray tasks, one per start point) stored like every
other dataset here: built under a temporary directory and swapped into place when complete,
with the spec that made them in the metadata. A user's own demos (any local Minari dataset
of PointMaze observations) can stand in for them. Algorithm 5 then cuts the episodes into
non-overlapping K-row segments on the base diffuser's time stride.
"""

from __future__ import annotations

import numpy as np
import ray

from rrf_ray.data.minari_io import DatasetError, dataset_dir, write_dataset
from rrf_ray.data.windows import Normalizer, episode_rows, open_dataset
from rrf_ray.maze2d.mazes import Maze

GENERATION_KEY = "rrf_generation"


def expert_dataset_id(maze_name: str, key: str) -> str:
    return f"rrf/irl-{maze_name}/experts-{key[:12]}-v0"


def expert_rollouts(base_dir: str, maze: Maze, true_reward, guidance, starts_rowcol, steps: int,
                    replan_every: int, seed: int, progress: str | None = None):
    """Rollouts of the base diffuser at `base_dir` guided by the true reward (one batch; a Ray task's unit)."""
    import torch

    from rrf_ray.diffusion.checkpoint import load_diffuser
    from rrf_ray.irl.rollouts import DiffuserActor, rollout

    torch.set_num_threads(1)
    diffuser = load_diffuser(base_dir)
    guide = true_reward.guide(diffuser.normalizer, diffuser.model.action_dim)
    actor = DiffuserActor(diffuser, guide, guidance, seed=seed)
    return rollout(maze, actor, starts_rowcol, steps, replan_every, seed=seed, progress=progress)


def make_expert_dataset(did: str, generation: dict, base_dir: str, maze: Maze, true_reward, spec,
                        root=None) -> str:
    """Roll the experts out (one Ray task per start point) and store them as Minari dataset `did`.

    `spec` is an ExpertDataSpec; `generation` (JSON) is recorded in the metadata, and an existing
    dataset made from the same generation is reused.
    """
    from rrf_ray.irl.rollouts import start_table
    from rrf_ray.maze2d.pointmaze import make_env

    final = dataset_dir(did, root)
    if final.exists():
        meta = (open_dataset(did, root).storage.metadata or {}).get(GENERATION_KEY)
        if meta == generation:
            return did
        raise DatasetError(f"{final} holds expert demonstrations made from another spec; remove it to remake them")
    task = ray.remote(expert_rollouts).options(num_cpus=1)
    refs = [task.remote(base_dir, maze, true_reward, spec.guidance, start_table([s], spec.rollouts_per_start),
                        spec.steps, spec.replan_every, seed=spec.seed * 1000 + i)
            for i, s in enumerate(spec.starts)]
    batches = ray.get(refs)

    from minari.data_collector import EpisodeBuffer

    buffers = []
    for b in batches:
        for obs, act in zip(b.observations, b.actions):
            n = len(act)
            truncations = np.zeros(n, dtype=bool)
            truncations[-1] = True
            buffers.append(EpisodeBuffer(observations=obs.astype(np.float64), actions=act.astype(np.float32),
                                         rewards=true_reward(obs[1:, :2]).astype(np.float64),
                                         terminations=np.zeros(n, dtype=bool), truncations=truncations))
    env = make_env(maze)
    try:
        write_dataset(did, buffers, env, root, metadata={GENERATION_KEY: generation},
                      observation_space=env.observation_space["observation"], action_space=env.action_space,
                      algorithm_name="rrf_ray: base diffuser guided by the true reward",
                      description=f"IRL expert rollouts in {maze.name}: {len(buffers)} rollouts of {spec.steps} steps")
    finally:
        env.close()
    return did


def load_episodes(did: str, root=None, how_to_make: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(observations (L+1, 4), actions (L, 2)) of every episode of a local Minari dataset."""
    dataset = open_dataset(did, root, how_to_make)
    out = []
    for ep in dataset.iterate_episodes():
        obs = ep.observations["observation"] if isinstance(ep.observations, dict) else ep.observations
        obs, act = np.asarray(obs, dtype=np.float64), np.asarray(ep.actions, dtype=np.float64)
        if obs.ndim != 2 or obs.shape[1] < 2 or act.ndim != 2:
            raise DatasetError(f"dataset {did!r}: episode {ep.id} is not PointMaze-like "
                               f"(observations {obs.shape}, actions {act.shape})")
        out.append((obs, act))
    if not out:
        raise DatasetError(f"dataset {did!r} has no episodes")
    return out


def cut_segments(episodes, k: int, stride: int, normalizer: Normalizer | None = None) -> np.ndarray:
    """Algorithm 5 on the base's time stride: non-overlapping K-row cuts of each episode's [a | s] rows
    taken every `stride` steps, from every phase 0..stride-1; (N, K, D) float32, normalised if asked."""
    segments = []
    for obs, act in episodes:
        rows = episode_rows(obs, act, min_rows=0)[:-1]  # the [a_t | s_t] rows; drop the action-less last one
        for phase in range(stride):
            sub = rows[phase::stride]
            for j in range(0, len(sub) - k + 1, k):
                segments.append(sub[j:j + k])
    if not segments:
        raise DatasetError(f"no expert episode is long enough for one segment of {k} rows at stride {stride} "
                           f"({(k - 1) * stride + 1} steps)")
    out = np.stack(segments).astype(np.float32)
    return normalizer.normalize(out).astype(np.float32) if normalizer is not None else out
