"""One relative-reward extraction, the same in every experiment: triples, then the aligned reward.

Given a base and an expert diffuser (artifact keys) and the datasets' windows, it makes the
training triples (Algorithm 1 or 2, docs/method.md) as a Parquet shard set and trains the reward
on them, each an artifact reused when finished. Every experiment calls `extract_reward`; the
image experiment, whose triples are latent chains made by its own pipeline, calls
`aligned_reward` on them. The placement rules live here once: with one CPU worker
(`resources.trains_locally`) triples and training run in the caller's process; with GPUs each
triple task holds `resources.pregen_gpus_per_task`.

Validation triples come from held-out episodes only (`WindowLoader(role, "heldout")`), so the
validation loss and gradient cosine measure the reward on windows it never trained on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rrf_ray.engine.artifacts import artifact_key
from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.spec import ResourceSpec
from rrf_ray.engine.stages import SweepPaths, copy_checkpoint
from rrf_ray.rrf.spec import PregenSpec, RewardSpec

# 2: validation triples from held-out episodes, each row's source episode recorded, inpainted
# entries left out of the loss (shard sets and rewards made before are not reused).
TRIPLES_VERSION = 2
START_WINDOWS = 4096  # Algorithm 2: windows whose first state the chains start from
METRICS_FILE = "alignment_metrics.json"  # in a reward artifact: its training run's last metrics
ROLE_CODE = {"base": 1, "expert": 2}  # a triple's source_dataset

# (role "base" | "expert", split "train" | "heldout") -> that dataset's windows, in the base model's normalisation
WindowLoader = Callable[[str, str], object]


@dataclass
class Extraction:
    """A finished relative reward: its artifact key and directory, and its alignment run's last metrics."""

    key: str
    path: Path
    metrics: dict
    seconds: dict = field(default_factory=dict)  # wall-clock seconds of the phases run now: pregen_s, reward_s

    def summary(self) -> dict:
        """The fit a report shows: validation loss and gradient cosine on held-out episodes, training cosine."""
        return {f"reward_{k}": float(self.metrics[k]) for k in ("val_loss", "val_cosine", "cosine")
                if k in self.metrics}


def extraction_keys(base_key: str, expert_key: str, pregen: PregenSpec, reward: RewardSpec,
                    seed: int) -> tuple[str, str]:
    """(shards key, reward key): exactly what determines the triples and the reward. The windows come from the
    datasets the two models were trained on, which their keys already name."""
    shards = artifact_key("triples", TRIPLES_VERSION, base_key, expert_key, pregen, int(seed))
    return shards, artifact_key("reward", shards, reward)


def draw_windows(load: WindowLoader, pregen: PregenSpec, split: str, rng: np.random.Generator, like=None):
    """The windows one split of the triples is made from: Algorithm 1 noises windows of its noising source
    (up to pregen.noised_windows of each dataset), Algorithm 2 starts its chains from base windows.

    like: a training draw whose mix of datasets this draw copies (as many windows of each, drawn with
    replacement), so validation has the training mix: held-out expert episodes are few, and "up to n"
    of each would make validation mostly base windows (measured: 72% against 50% in maze2d-smoke)."""
    from rrf_ray.rrf.pregenerate import WindowDraw

    if pregen.algorithm == "pregenerate":
        roles, n = ["base"], START_WINDOWS
    else:
        roles = {"base": ["base"], "expert": ["expert"], "mixed": ["base", "expert"]}[pregen.noising_source]
        n = pregen.noised_windows
    draws = []
    for role in roles:
        windows = load(role, split)
        count = min(len(windows), n) if like is None else int((like.dataset == ROLE_CODE[role]).sum())
        draws.append(WindowDraw.of(windows, ROLE_CODE[role], rng, count))
    return WindowDraw.concat(draws)


def make_triples(paths: SweepPaths, shards_key: str, base_dir: Path, expert_dir: Path, windows: WindowLoader,
                 pregen: PregenSpec, resources: ResourceSpec, seed: int) -> Path:
    """The triples' shard set (artifact `shards/<shards_key>`), made or completed unless finished."""
    from rrf_ray.rrf.pregenerate import pregenerate

    def build(directory: Path) -> None:
        rng = np.random.default_rng(seed)
        train = draw_windows(windows, pregen, "train", rng)
        val = draw_windows(windows, pregen, "heldout", rng, like=train) if pregen.val_fraction > 0 else None
        pregenerate(base_dir, expert_dir, directory, pregen, seed=seed, train=train, val=val,
                    gpus_per_task=resources.pregen_gpus_per_task if resources.use_gpu else 0.0, overwrite=True,
                    progress=False, on_this_node=paths.storage.is_remote, in_process=resources.trains_locally)

    return paths.artifacts.ensure("shards", shards_key, build, in_place=True)  # resumes a partial set


def aligned_reward(paths: SweepPaths, shards_key: str, reward_key: str, reward: RewardSpec,
                   resources: ResourceSpec, seed: int, label: str, normalizer: dict | None = None,
                   callbacks=None, materialize: bool | None = None) -> Extraction:
    """The reward aligned on the finished shard set `shards_key` (artifact `rewards/<reward_key>`)."""
    from rrf_ray.rrf.align import train_reward

    store, storage = paths.artifacts, paths.storage
    shard_dir = store.require("shards", shards_key, "the reward's training triples")

    def build(directory: Path) -> None:
        remote = (storage.fs, storage.remote_path(f"artifacts/shards/{shards_key}")) if storage.is_remote else None
        result = train_reward(shard_dir, reward, resources, paths.train, f"{label}-{reward_key}", seed=seed,
                              normalizer=normalizer, materialize=materialize, callbacks=callbacks, remote=remote)
        copy_checkpoint(result, directory)
        write_atomic(directory / METRICS_FILE, json.dumps(dict(result.metrics or {}), indent=1, default=str))

    path = store.ensure("rewards", reward_key, build)
    metrics_file = path / METRICS_FILE
    return Extraction(reward_key, path, json.loads(metrics_file.read_text()) if metrics_file.exists() else {})


def extract_reward(paths: SweepPaths, base_key: str, expert_key: str, windows: WindowLoader, pregen: PregenSpec,
                   reward: RewardSpec, resources: ResourceSpec, seed: int, label: str,
                   callbacks=None) -> Extraction:
    """The relative reward of the expert diffuser against the base (both finished `diffusers` artifacts):
    triples from `windows` (training split; validation from held-out episodes), then the alignment run."""
    from rrf_ray.diffusion.checkpoint import load_normalizer

    store = paths.artifacts
    base_dir = store.require("diffusers", base_key, "the base diffuser")
    expert_dir = store.require("diffusers", expert_key, "the expert diffuser")
    shards_key, reward_key = extraction_keys(base_key, expert_key, pregen, reward, seed)
    seconds, start = {}, time.perf_counter()
    if not store.is_done("rewards", reward_key):  # a finished reward needs its triples no more
        make_triples(paths, shards_key, base_dir, expert_dir, windows, pregen, resources, seed)
        seconds["pregen_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    normalizer = load_normalizer(base_dir)
    extraction = aligned_reward(paths, shards_key, reward_key, reward, resources, seed, label,
                                normalizer=None if normalizer is None else normalizer.to_dict(), callbacks=callbacks)
    if "pregen_s" in seconds:
        seconds["reward_s"] = round(time.perf_counter() - start, 2)
    extraction.seconds = seconds
    return extraction
