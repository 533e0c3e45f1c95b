"""Training triples for the relative reward, made by Ray tasks and written as Parquet shards.

Algorithm 2 (`pregenerate`): from x_T ~ N(0, I) both models step in lock step. At each
step t -> t-1 both take x_{t-1}(m) = mean_m(x_t) + std_t * z from the *same* x_t with the
*same* noise z, so x_{t-1}(2) - x_{t-1}(1) = mean_2 - mean_1 exactly (no noise). The
row (t, x_t, x_{t-1}(1), x_{t-1}(2)) is kept, and the chain continues with model m's
output; chains following the base (kind 1) and the expert (kind 2) are both kept.

Algorithm 1 (`dataset_noising`): x_0 from dataset windows, x_t by the forward process,
both models' posterior means from x_t; grad rho is taken at x_t or at the base mean.

Validation shards are made from windows of held-out episodes only (each row records its
source dataset and episode), so the validation loss and cosine measure the reward on data
it never trained on.

A "model" is anything with n_timesteps, horizon, transition_dim, action_dim,
posterior(x, t) -> (mean, std) and add_noise(x0, noise, t): a `TrajectoryDiffuser`, or a
checkpoint directory of one.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import numpy as np
import ray
import torch

from rrf_ray.diffusion.model import apply_conditioning
from rrf_ray.engine.precision import configure_precision
from rrf_ray.rrf.shards import (
    Manifest,
    ShardError,
    run_shard_tasks,
    shard_is_intact,
    triples_table,
    write_shard,
)
from rrf_ray.rrf.spec import PregenSpec

_MODELS: dict[str, object] = {}


def resolve_model(ref):
    """A model object from itself or from a checkpoint path (loaded once per process)."""
    if isinstance(ref, (str, Path)):
        key = str(Path(ref).resolve())
        if key not in _MODELS:
            from rrf_ray.diffusion.checkpoint import load_diffuser

            _MODELS[key] = load_diffuser(key).model
        return _MODELS[key]
    return ref


def model_fingerprint(ref) -> str:
    """Content hash of a checkpoint directory or of a model object's bytes."""
    h = hashlib.sha256()
    if isinstance(ref, (str, Path)):
        for f in sorted(Path(ref).iterdir()):
            if f.is_file() and not f.name.startswith("."):
                h.update(f.name.encode())
                h.update(f.read_bytes())
    else:
        h.update(cloudpickle.dumps(ref))
    return h.hexdigest()[:16]


def check_compatible(base, expert) -> None:
    for attr in ("n_timesteps", "horizon", "transition_dim", "action_dim"):
        if getattr(base, attr) != getattr(expert, attr):
            raise ValueError(f"base and expert models differ in {attr}: "
                             f"{getattr(base, attr)} vs {getattr(expert, attr)}")


def _device(gpus: float) -> torch.device:
    device = torch.device("cuda" if gpus > 0 and torch.cuda.is_available() else "cpu")
    configure_precision(device)
    return device


@dataclass
class WindowDraw:
    """Normalised dataset windows (N, H, D) and where each came from: its dataset (1 base, 2 expert) and
    episode. Algorithm 1 noises them; Algorithm 2 inpaints their first state as the chains' start."""

    windows: np.ndarray
    dataset: np.ndarray
    episodes: np.ndarray

    @classmethod
    def of(cls, windows, dataset: int, rng: np.random.Generator, n: int) -> "WindowDraw":
        """n windows drawn with replacement from a TrajectoryWindows of dataset `dataset` (1 base, 2 expert)."""
        idx = rng.integers(len(windows), size=n)
        return cls(windows.batch(idx), np.full(n, dataset, np.int8), windows.episode_of_window[idx])

    @classmethod
    def concat(cls, draws: list["WindowDraw"]) -> "WindowDraw":
        return cls(*(np.concatenate([getattr(d, f) for d in draws]) for f in ("windows", "dataset", "episodes")))

    def __len__(self) -> int:
        return len(self.windows)

    def take(self, idx) -> "WindowDraw":
        return WindowDraw(np.asarray(self.windows[idx], np.float32), self.dataset[idx], self.episodes[idx])

    def digest(self) -> str:
        h = hashlib.sha256(np.ascontiguousarray(self.windows, np.float32).tobytes())
        h.update(np.ascontiguousarray(self.episodes, np.int64).tobytes())
        return h.hexdigest()[:16]


@torch.no_grad()
def lockstep_triples(base, expert, n_chains: int, follow: int, starts: WindowDraw | None,
                     generator: torch.Generator, device: torch.device) -> dict:
    """Algorithm 2 for one batch of chains following model `follow` (1 base, 2 expert)."""
    shape = (n_chains, base.horizon, base.transition_dim)
    cond, source = None, {}
    if starts is not None:
        pick = torch.randint(0, len(starts), (n_chains,), generator=generator).numpy()
        cond = {0: torch.as_tensor(starts.windows[pick, 0, base.action_dim:], device=device)}
        source = {"source_dataset": starts.dataset[pick], "source_episode": starts.episodes[pick]}
    x = apply_conditioning(torch.randn(shape, generator=generator).to(device), cond, base.action_dim)
    rows = {"x_next": [], "x_base": [], "x_expert": [], "t": []}
    for i in reversed(range(base.n_timesteps)):
        t = torch.full((n_chains,), i, dtype=torch.long, device=device)
        mean_1, std = base.posterior(x, t)
        mean_2, _ = expert.posterior(x, t)
        z = torch.randn(shape, generator=generator).to(device)
        x_1 = apply_conditioning(mean_1 + std * z, cond, base.action_dim)
        x_2 = apply_conditioning(mean_2 + std * z, cond, base.action_dim)
        for key, value in (("x_next", x), ("x_base", x_1), ("x_expert", x_2)):
            rows[key].append(value.float().cpu().numpy())
        rows["t"].append(np.full(n_chains, i))
        x = x_1 if follow == 1 else x_2
    out = {k: np.concatenate(v) for k, v in rows.items()}
    return {**out, **{k: np.tile(v, base.n_timesteps) for k, v in source.items()}}


@torch.no_grad()
def noised_triples(base, expert, x0: WindowDraw, grad_at: str, generator: torch.Generator,
                   device: torch.device) -> dict:
    """Algorithm 1 for a batch of dataset windows x0 (normalised)."""
    windows = torch.as_tensor(x0.windows, device=device)
    n = len(windows)
    t = torch.randint(0, base.n_timesteps, (n,), generator=generator).to(device)
    noise = torch.randn(windows.shape, generator=generator).to(device)
    cond = {0: windows[:, 0, base.action_dim:]}
    x_t = apply_conditioning(base.add_noise(windows, noise, t), cond, base.action_dim)
    mean_1, _ = base.posterior(x_t, t)
    mean_2, _ = expert.posterior(x_t, t)
    mean_1 = apply_conditioning(mean_1, cond, base.action_dim)
    mean_2 = apply_conditioning(mean_2, cond, base.action_dim)
    x_eval = x_t if grad_at == "x_t" else mean_1
    return {"x_next": x_eval.cpu().numpy(), "x_base": mean_1.cpu().numpy(),
            "x_expert": mean_2.cpu().numpy(), "t": t.cpu().numpy(),
            "source_dataset": x0.dataset, "source_episode": x0.episodes}


def make_shard(kind: str, base, expert, path: str, chain_ids: list[int], seed_seq, starts: WindowDraw | None,
               x0: WindowDraw | None, grad_at: str, device: torch.device) -> dict:
    """Write one shard of triples from loaded models; returns its `write_shard` entry."""
    generator = torch.Generator().manual_seed(int(seed_seq.generate_state(1)[0]))
    parts = []
    if kind == "pregenerate":
        for follow in (1, 2):
            part = lockstep_triples(base, expert, len(chain_ids), follow, starts, generator, device)
            steps = base.n_timesteps
            part["chain_kind"] = np.full(len(part["t"]), follow)
            part["chain_id"] = np.tile(np.asarray(chain_ids), steps)
            parts.append(part)
    else:
        part = noised_triples(base, expert, x0, grad_at, generator, device)
        part["chain_kind"] = np.zeros(len(part["t"]))
        part["chain_id"] = np.asarray(chain_ids)
        parts.append(part)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return write_shard(Path(path), triples_table(**merged))


@ray.remote
def _make_shard_task(kind: str, base_ref, expert_ref, path: str, chain_ids: list[int], seed_seq,
                     starts, x0, grad_at: str, gpus: float) -> dict:
    device = _device(gpus)
    if device.type == "cpu":
        torch.set_num_threads(1)  # one CPU per task: parallelism comes from running many tasks
    base = resolve_model(base_ref).to(device).eval()
    expert = resolve_model(expert_ref).to(device).eval()
    return make_shard(kind, base, expert, path, chain_ids, seed_seq, starts, x0, grad_at, device)


def _plan(spec: PregenSpec) -> list[list[int]]:
    """Chain (or dataset-window) ids of each shard."""
    total = spec.chains_per_kind if spec.algorithm == "pregenerate" else spec.noised_windows
    per = spec.chains_per_shard if spec.algorithm == "pregenerate" else spec.noised_per_shard
    n = math.ceil(total / per)
    return [list(range(i * per, min(total, (i + 1) * per))) for i in range(n)]


def _val_count(n_shards: int, fraction: float) -> int:
    if fraction <= 0 or n_shards < 2:
        return 0
    return min(n_shards - 1, max(1, round(fraction * n_shards)))


def pregenerate(base, expert, out_dir, spec: PregenSpec, seed: int = 0, train: WindowDraw | None = None,
                val: WindowDraw | None = None, gpus_per_task: float = 0.0, overwrite: bool = False,
                progress: bool = True, on_this_node: bool = False, in_process: bool = False) -> Manifest:
    """Make (or complete, or repair) the shards of `out_dir`; returns its manifest.

    train / val: dataset windows for the training and the validation shards. Algorithm 1 noises
    them (`val` must come from episodes the training windows do not: validation measures the
    reward on data it never saw); Algorithm 2 inpaints their first state as each chain's start
    (none given: unconditioned chains, every one fresh noise, so validation needs no windows). With
    training windows but no `val`, no shard is held out.

    on_this_node: run the shard tasks on the calling node (when `out_dir` is not on a
    file system that every node shares).
    in_process: write the shards here, one after another, with the models loaded once, instead
    of one Ray task per shard (for a one-CPU trial, tasks only add process start-up and model
    loading on CPUs the trial does not hold).
    A rerun keeps intact shards and regenerates missing or corrupt ones.
    """
    base_model, expert_model = resolve_model(base), resolve_model(expert)
    check_compatible(base_model, expert_model)
    if spec.algorithm == "dataset_noising" and train is None:
        raise ValueError("dataset_noising needs training windows (train=WindowDraw)")
    out_dir = Path(out_dir)
    fingerprint = {
        "algorithm": spec.algorithm, "base": model_fingerprint(base), "expert": model_fingerprint(expert),
        "seed": int(seed), "chains_per_kind": spec.chains_per_kind, "chains_per_shard": spec.chains_per_shard,
        "val_fraction": spec.val_fraction,
        "train": None if train is None else train.digest(), "val": None if val is None else val.digest(),
    }
    if spec.algorithm == "dataset_noising":
        fingerprint.update(noised_windows=spec.noised_windows, noised_per_shard=spec.noised_per_shard,
                           grad_at=spec.grad_at, noising_source=spec.noising_source)
    manifest = Manifest.load(out_dir)
    if manifest is not None and manifest.fingerprint != fingerprint:
        if not overwrite:
            raise ShardError(f"{out_dir} holds shards made from another spec or other models; "
                             "use a new directory or overwrite=True")
        shutil.rmtree(out_dir)
        manifest = None
    out_dir.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        conditioned = None if train is None else {"rows": [0], "first_column": base_model.action_dim}
        manifest = Manifest(fingerprint, (base_model.horizon, base_model.transition_dim), conditioned=conditioned)

    plan = _plan(spec)
    # Validation needs windows of its own when the training shards use windows; unconditioned chains are all fresh.
    n_val = _val_count(len(plan), spec.val_fraction) if val is not None or train is None else 0
    names = [f"shard-{i:05d}.parquet" for i in range(len(plan))]
    splits = ["val" if i >= len(plan) - n_val else "train" for i in range(len(plan))]
    todo = [i for i, name in enumerate(names) if not shard_is_intact(out_dir, name, manifest.shards.get(name))]
    for i in todo:
        manifest.shards.pop(names[i], None)
    manifest.save(out_dir)

    steps = base_model.n_timesteps
    rows_of = [2 * len(ids) * steps if spec.algorithm == "pregenerate" else len(ids) for ids in plan]
    source = {"train": train, "val": val}
    picks = None
    if spec.algorithm == "dataset_noising":  # Algorithm 1: each shard noises its split's windows, drawn here
        rng = np.random.default_rng([int(seed), 7])
        picks = {split: None if draw is None else rng.integers(len(draw), size=spec.noised_windows)
                 for split, draw in source.items()}

    def shard_args(i):
        split = splits[i]
        x0 = None if picks is None else source[split].take(picks[split][plan[i][0]:plan[i][-1] + 1])
        starts = source[split] if spec.algorithm == "pregenerate" else None
        return (str(out_dir / names[i]), plan[i], np.random.SeedSequence([int(seed)], spawn_key=(i,)), starts, x0)

    if in_process:
        device = _device(gpus_per_task)
        base_model, expert_model = base_model.to(device).eval(), expert_model.to(device).eval()
        from tqdm.auto import tqdm

        for i in tqdm(todo, desc=f"triples -> {out_dir.name}", unit="shard", disable=not progress):
            path, ids, seed_seq, starts, x0 = shard_args(i)
            entry = make_shard(spec.algorithm, base_model, expert_model, path, ids, seed_seq, starts, x0,
                               spec.grad_at, device)
            manifest.shards[names[i]] = {**entry, "split": splits[i]}
            manifest.save(out_dir)
        return manifest

    base_ref = base if isinstance(base, (str, Path)) else ray.put(base)
    expert_ref = expert if isinstance(expert, (str, Path)) else ray.put(expert)
    start_refs = {split: None if draw is None or spec.algorithm != "pregenerate" else ray.put(draw)
                  for split, draw in source.items()}

    def submit(i, strategy):
        path, ids, seed_seq, _, x0 = shard_args(i)
        return _make_shard_task.options(num_cpus=1, num_gpus=gpus_per_task, scheduling_strategy=strategy).remote(
            spec.algorithm, base_ref, expert_ref, path, ids, seed_seq, start_refs[splits[i]], x0, spec.grad_at,
            gpus_per_task)

    return run_shard_tasks(submit, todo, manifest, out_dir, names, splits, rows_of, "triples", progress,
                           on_this_node)
