"""Expert demonstrations: rollouts of the base guided by the true reward, as Minari datasets; K-step segments.

The experts are receding-horizon rollouts (Ray tasks, one per start point) stored like every
other dataset here: built under a temporary directory and swapped into place when complete,
with the spec that made them in the metadata. Each run seed has two sets, each its own dataset:
the training demonstrations and the selection-only ones (their own rollouts, their own seed),
every episode with a global id in the metadata. A user's own demos (any local Minari dataset of
PointMaze observations) can stand in for them, split by episode into the two sets. Algorithm 5
then cuts the episodes into non-overlapping K-row segments on the base diffuser's time stride.
"""

from __future__ import annotations

import numpy as np
import ray

from rrf_ray.data.minari_io import DatasetError, dataset_dir, write_dataset
from rrf_ray.data.windows import Normalizer, episode_rows, open_dataset
from rrf_ray.maze2d.mazes import Maze

GENERATION_KEY = "rrf_generation"


EPISODE_IDS_KEY = "rrf_episode_ids"  # metadata: a global id per episode (which rollout, or which source episode)


def expert_dataset_id(maze_name: str, key: str, role: str = "experts") -> str:
    """`experts`: the training demonstrations; `selection`: the selection-only ones."""
    return f"rrf/irl-{maze_name}/{role}-{key[:12]}-v0"


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


def expert_dataset_ready(did: str, generation: dict, root=None) -> bool:
    """True if dataset `did` exists and was made from `generation`; raises if it was made from another."""
    final = dataset_dir(did, root)
    if not final.exists():
        return False
    meta = (open_dataset(did, root).storage.metadata or {}).get(GENERATION_KEY)
    if meta == generation:
        return True
    raise DatasetError(f"{final} holds expert demonstrations made from another spec; remove it to remake them")


def rollout_seed(spec, start_index: int) -> int:
    """The noise and placement seed of the rollouts from start `start_index` of an ExpertDataSpec."""
    return spec.seed * 1000 + start_index


def submit_expert_rollouts(base_dir: str, maze: Maze, true_reward, spec) -> list:
    """One Ray task per start point of `spec` (an ExpertDataSpec): refs to their Rollouts."""
    from rrf_ray.irl.rollouts import start_table

    task = ray.remote(expert_rollouts).options(num_cpus=1)
    return [task.remote(base_dir, maze, true_reward, spec.guidance, start_table([s], spec.rollouts_per_start),
                        spec.steps, spec.replan_every, seed=rollout_seed(spec, i))
            for i, s in enumerate(spec.starts)]


def write_expert_dataset(did: str, generation: dict, batches, maze: Maze, true_reward, spec, role: str,
                         root=None) -> str:
    """Store the rollouts `batches` (one per start of `spec`) as Minari dataset `did`, each episode's global id
    (`role`, rollout seed, start, rollout) in the metadata."""
    from minari.data_collector import EpisodeBuffer

    from rrf_ray.maze2d.pointmaze import make_env

    buffers, ids = [], []
    for i, b in enumerate(batches):
        for j, (obs, act) in enumerate(zip(b.observations, b.actions)):
            n = len(act)
            truncations = np.zeros(n, dtype=bool)
            truncations[-1] = True
            buffers.append(EpisodeBuffer(observations=obs.astype(np.float64), actions=act.astype(np.float32),
                                         rewards=true_reward(obs[1:, :2]).astype(np.float64),
                                         terminations=np.zeros(n, dtype=bool), truncations=truncations))
            ids.append(f"{role}/seed{rollout_seed(spec, i)}/start{i}/rollout{j}")
    env = make_env(maze)
    try:
        write_dataset(did, buffers, env, root, metadata={GENERATION_KEY: generation, EPISODE_IDS_KEY: ids},
                      observation_space=env.observation_space["observation"], action_space=env.action_space,
                      algorithm_name="rrf_ray: base diffuser guided by the true reward",
                      description=f"IRL expert rollouts ({role}) in {maze.name}: {len(buffers)} rollouts of "
                                  f"{spec.steps} steps")
    finally:
        env.close()
    return did


def make_expert_datasets(jobs, maze: Maze, true_reward, root=None) -> list[str]:
    """Roll out every missing dataset of `jobs` at once (one Ray task per start point of each) and store each.

    jobs: (did, generation, base_dir, spec, role) tuples; `spec` an ExpertDataSpec; `generation` (JSON) is
    recorded in the metadata, and an existing dataset made from the same generation is reused.
    """
    todo = [job for job in jobs if not expert_dataset_ready(job[0], job[1], root)]
    refs = [submit_expert_rollouts(base_dir, maze, true_reward, spec) for _, _, base_dir, spec, _ in todo]
    for (did, generation, _, spec, role), mine in zip(todo, refs):
        write_expert_dataset(did, generation, ray.get(mine), maze, true_reward, spec, role, root)
    return [job[0] for job in jobs]


def make_expert_dataset(did: str, generation: dict, base_dir: str, maze: Maze, true_reward, spec,
                        root=None) -> str:
    """Roll the experts out (one Ray task per start point) and store them as Minari dataset `did`."""
    return make_expert_datasets([(did, generation, base_dir, spec, "experts")], maze, true_reward, root)[0]


def split_user_dataset(source: str, n_selection: int, train_did: str, selection_did: str, maze: Maze,
                       root=None) -> tuple[str, str]:
    """A user's demonstrations split by episode: the last `n_selection` episodes (by id) into the selection-only
    dataset `selection_did`, the rest into `train_did` (both under `root`; the source is not touched).
    Rewards are not copied (no method reads them)."""
    from minari.data_collector import EpisodeBuffer

    from rrf_ray.maze2d.pointmaze import make_env

    generation = {"source": source, "n_selection": int(n_selection)}
    parts = [(train_did, "experts")] + ([(selection_did, "selection")] if n_selection else [])
    if all(expert_dataset_ready(d, {**generation, "role": r}, root) for d, r in parts):
        return train_did, selection_did
    episodes = load_episodes(source)
    if len(episodes) <= n_selection:
        raise DatasetError(f"dataset {source!r} has {len(episodes)} episodes: holding out {n_selection} for the "
                           "guidance-scale selection leaves none to learn from (lower "
                           "experts.selection_rollouts_per_start)")
    cut = len(episodes) - n_selection
    env = make_env(maze)
    try:
        for did, role, part in ((train_did, "experts", range(cut)), (selection_did, "selection",
                                                                     range(cut, len(episodes)))):
            if not part or expert_dataset_ready(did, {**generation, "role": role}, root):
                continue
            buffers = []
            for i in part:
                obs, act = episodes[i]
                n = len(act)
                buffers.append(EpisodeBuffer(observations=obs[:, :4].astype(np.float64),
                                             actions=act.astype(np.float32), rewards=np.zeros(n),
                                             terminations=np.zeros(n, dtype=bool),
                                             truncations=np.r_[np.zeros(n - 1, dtype=bool), True]))
            write_dataset(did, buffers, env, root,
                          metadata={GENERATION_KEY: {**generation, "role": role},
                                    EPISODE_IDS_KEY: [f"{source}#{i}" for i in part]},
                          observation_space=env.observation_space["observation"], action_space=env.action_space,
                          algorithm_name="rrf_ray: a user's demonstrations, split",
                          description=f"{role} episodes of {source}")
    finally:
        env.close()
    return train_did, selection_did


def episode_ids(did: str, root=None) -> list[str]:
    """The global episode ids recorded in an expert dataset's metadata."""
    return list((open_dataset(did, root).storage.metadata or {}).get(EPISODE_IDS_KEY) or [])


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
