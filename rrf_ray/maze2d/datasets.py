"""Maze2D datasets: Ray tasks generate chunks, Minari stores them, atomically (data.minari_io).

A dataset is built under a temporary directory next to its final place and renamed
into place only when complete, so a crash never leaves a half-written dataset that a
later run would trust. Its metadata records the generation spec (to reuse it, or refuse
to silently replace it) and the held-out episodes.
"""

from __future__ import annotations

import itertools
import json
import math
import zlib

import numpy as np
import ray
from tqdm.auto import tqdm

from rrf_ray.data.minari_io import (
    HELDOUT_KEY,
    DatasetError,
    building,
    dataset_dir,
    heldout_episodes,
    read_metadata,
)
from rrf_ray.maze2d.generate import Chunk, generate_chunk
from rrf_ray.maze2d.mazes import Maze
from rrf_ray.maze2d.spec import DataSpec

FORMAT = "rrf-maze2d/1"
GENERATION_KEY = "rrf_generation"
_SIZE_FIELDS = ("base_transitions", "expert_transitions")  # `transitions` says the size of each dataset


def dataset_id(maze_name: str, goal: int | None) -> str:
    kind = "base" if goal is None else f"goal{goal}"
    return f"rrf/maze2d-{maze_name}/{kind}-v0"


def how_to_make(maze_name: str, goal: int | None, root=None) -> str:
    """What a missing Maze2D dataset's error tells the user to run."""
    root_arg = f" --root {root}" if root is not None else ""
    goal_arg = f" --goal {goal}" if goal is not None else ""
    return (f"Make it with: python -m rrf_ray.data maze2d --maze {maze_name}{goal_arg}{root_arg} "
            "(or point MINARI_DATASETS_PATH / --root at the directory that holds it).")


def generation_spec(maze: Maze, goal: int | None, transitions: int, seed: int, data: DataSpec) -> dict:
    """Everything that determines the generated data, as plain JSON."""
    spec = {
        "format": FORMAT,
        "maze": maze.name,
        "layout": list(maze.layout),
        "goal_index": goal,
        "goal_rowcol": None if goal is None else list(maze.goal(goal)),
        "goal_xy": None if goal is None else [float(v) for v in maze.goal_xy(goal)],
        "transitions": int(transitions),
        "seed": int(seed),
    }
    spec.update({f: v for f, v in data.fingerprint().items() if f not in _SIZE_FIELDS})
    return json.loads(json.dumps(spec))


def chunk_plan(transitions: int, chunk: int) -> list[int]:
    """Transitions per chunk: fixed by the size alone, so any worker count gives the same data."""
    n = math.ceil(transitions / chunk)
    return [min(chunk, transitions - i * chunk) for i in range(n)]


def _chunk_seeds(did: str, seed: int, n: int) -> list[np.random.SeedSequence]:
    entropy = [int(seed), zlib.crc32(did.encode())]
    return [np.random.SeedSequence(entropy, spawn_key=(i,)) for i in range(n)]


def _buffers(chunk: Chunk):
    from minari.data_collector import EpisodeBuffer

    for ep in chunk.episodes:
        n = len(ep)
        terminations = np.zeros(n, dtype=bool)
        truncations = np.zeros(n, dtype=bool)
        (terminations if ep.terminated else truncations)[-1] = True
        yield EpisodeBuffer(
            observations=ep.observations.astype(np.float64),
            actions=ep.actions.astype(np.float32),
            rewards=ep.rewards.astype(np.float64),
            terminations=terminations,
            truncations=truncations,
            infos={"goal": ep.goal if ep.goal.ndim == 2 else np.repeat(ep.goal[None, :], n + 1, axis=0)},
        )


def check_existing(did: str, spec: dict, root=None, overwrite: bool = False) -> bool:
    """True if an identical dataset is already there; raises if a different one is."""
    path = dataset_dir(did, root)
    if not path.exists():
        return False
    meta = read_metadata(did, root)
    existing = (meta or {}).get(GENERATION_KEY)
    if existing == spec:
        return True
    if overwrite:
        return False
    if existing is None:
        raise DatasetError(f"{path} exists but was not made by rrf_ray; pass --overwrite to replace it")
    diff = sorted(k for k in set(spec) | set(existing) if spec.get(k) != existing.get(k))
    raise DatasetError(
        f"dataset {did} at {path} was generated with a different spec (differs in: {', '.join(diff)}); "
        "pass --overwrite to replace it"
    )


_remote_chunk = ray.remote(generate_chunk)


def generate_maze2d(maze: Maze, goal: int | None, transitions: int, seed: int, data: DataSpec,
                    root=None, workers: int | None = None, overwrite: bool = False,
                    progress: bool = True) -> str:
    """Make (or reuse) the base dataset (goal None) or the expert dataset of goal k; returns its id.

    Needs Ray initialised. Chunks run as Ray tasks, `workers` at a time, and are written
    to Minari in order as they arrive.
    """
    import minari

    from rrf_ray.maze2d.pointmaze import make_env

    did = dataset_id(maze.name, goal)
    spec = generation_spec(maze, goal, transitions, seed, data)
    if check_existing(did, spec, root, overwrite):
        return did
    goal_rowcol = None if goal is None else maze.goal(goal)
    plan = chunk_plan(transitions, data.chunk_transitions)
    seeds = _chunk_seeds(did, seed, len(plan))
    workers = workers or data.workers or max(1, int(ray.available_resources().get("CPU", 1)))

    env = make_env(maze)
    try:
        pending, ready, next_to_write, dropped = {}, {}, 0, 0
        dataset = None

        todo = iter(range(len(plan)))

        def submit_more():
            # Keep `workers` chunks in flight; called before writing so workers never wait on disk.
            for i in itertools.islice(todo, max(0, workers - len(pending))):
                ref = _remote_chunk.options(num_cpus=1, scheduling_strategy="DEFAULT").remote(maze, goal_rowcol, plan[i], seeds[i], data)
                pending[ref] = i

        bar = tqdm(total=transitions, unit="steps", desc=did, disable=not progress, mininterval=1.0)
        with building(did, root), bar:
            submit_more()
            while next_to_write < len(plan):
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    i = pending.pop(ref)
                    ready[i] = ray.get(ref)
                    bar.update(min(plan[i], ready[i].transitions))
                submit_more()
                while next_to_write in ready:
                    chunk = ready.pop(next_to_write)
                    dropped += chunk.dropped_episodes
                    if dataset is None:
                        dataset = minari.create_dataset_from_buffers(
                            did, list(_buffers(chunk)), env=env,
                            observation_space=env.observation_space["observation"],
                            action_space=env.action_space,
                            algorithm_name="rrf_ray waypoint controller (D4RL Maze2D procedure)",
                            description=_describe(maze, goal, transitions, seed),
                        )
                    else:
                        dataset.storage.update_episodes(_buffers(chunk))
                    next_to_write += 1
            n_episodes = dataset.storage.total_episodes
            dataset.storage.update_metadata({
                GENERATION_KEY: spec,
                HELDOUT_KEY: heldout_episodes(n_episodes, data.heldout_fraction, seed),
                "rrf_dropped_episodes": int(dropped),
            })
    finally:
        env.close()
    return did


def _describe(maze: Maze, goal: int | None, transitions: int, seed: int) -> str:
    what = "reward-agnostic base data (random goals)" if goal is None else f"expert data for goal {goal} {maze.goal(goal)}"
    return f"Maze2D {maze.name}: {what}; {transitions} transitions, seed {seed}; generated by rrf_ray"
