"""The alignment trainer: rho's input-gradient matched to the difference of two models' steps.

    L(theta) = E || grad_x rho(x_next, t) - (x_expert - x_base) ||^2

Triples stream from Parquet shards through Ray Data (`iter_torch_batches`) into Ray Train
workers; a one-CPU run in the caller's process with triples that fit in memory reads the
shards itself. The gradient of rho is differentiated again (create_graph) for the update.
With several workers, gradients are all-reduced by hand: DDP's hooks do not support
this double backward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.data
import ray.train
import ray.train.torch
import torch

from rrf_ray.engine.checkpoints import (
    LocalRun,
    adam,
    make_ema,
    restore_training,
    training_state,
)
from rrf_ray.engine.ray_runtime import quiet_ray_data
from rrf_ray.engine.spec import ResourceSpec
from rrf_ray.engine.training import (
    TrainingLoop,
    average_gradients,
    data_config,
    dataset_shard,
    fit_training_run,
    train_worker_setup,
)
from rrf_ray.rrf.reward_nets import (
    KIND,
    alignment_terms,
    build_reward_net,
    loss_mask,
    mean_cosine,
    sample_reward_config,
)
from rrf_ray.rrf.shards import Manifest, read_triples, verify_shards
from rrf_ray.rrf.spec import RewardSpec


@dataclass
class AlignJob:
    spec: RewardSpec
    sample_shape: tuple[int, ...]  # (horizon, transition_dim) windows, (C, H, W) latents
    normalizer: dict | None
    seed: int
    threads: int
    label: str
    has_val: bool
    cache: bool = False  # each worker's training triples fit in reward.memory_cache_mb: keep them in memory
    loss_mask: np.ndarray | None = None  # sample-shaped, False at inpainted entries (Manifest.loss_mask)
    local_run: LocalRun | None = None  # set when the run is in local mode (fit_training_run)


def _batches(shard, batch_size: int, device):
    return shard.iter_torch_batches(batch_size=batch_size, drop_last=True,
                                    local_shuffle_buffer_size=4 * batch_size, device=device)


def triple_bytes(sample_shape) -> int:
    """Bytes of one decoded triple: three float32 samples and an int64 t."""
    return 3 * 4 * math.prod(sample_shape) + 8


class EpochSource:
    """Training batches, epoch after epoch.

    `source` a dict of tensors (triples already in memory): every epoch is a seeded permutation
    of its rows. A Ray Data shard with cache False: every epoch streams from it. With cache True
    (the triples fit in memory): the first epoch reads the shard in a few large batches (one Ray
    Data execution, little per-batch overhead) and keeps them as tensors, as above.
    """

    COLUMNS = ("x_next", "x_base", "x_expert", "t")
    READ_ROWS = 8192

    def __init__(self, source, batch_size: int, device, cache: bool, seed: int):
        self.batch_size, self.device, self.cache = batch_size, device, cache
        self.shard, self.cached = (None, _on_device(source, device)) if isinstance(source, dict) else (source, None)
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self):
        if self.cached is None and not self.cache:
            yield from _batches(self.shard, self.batch_size, self.device)
            return
        if self.cached is None:
            parts = [{k: b[k] for k in self.COLUMNS}
                     for b in self.shard.iter_torch_batches(batch_size=self.READ_ROWS, device=self.device)]
            if not parts:
                return
            self.cached = {k: torch.cat([b[k] for b in parts]) for k in self.COLUMNS}
        n = len(self.cached["t"])
        order = torch.randperm(n, generator=self.generator).to(self.device)
        for start in range(0, n - self.batch_size + 1, self.batch_size):
            idx = order[start:start + self.batch_size]
            yield {k: v[idx] for k, v in self.cached.items()}


def _on_device(triples: dict, device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(triples[k]).to(device) for k in EpochSource.COLUMNS}


class ValidationBatches:
    """The first `n_batches` validation batches, kept: the same held-out triples at every
    checkpoint, read (from a Ray Data shard) once rather than in a Ray Data execution each time."""

    def __init__(self, source, batch_size: int, n_batches: int, device):
        self.source, self.batch_size, self.n_batches, self.device = source, batch_size, n_batches, device
        self.batches: list[dict] | None = None

    def __iter__(self):
        if self.batches is None:
            self.batches = []
            if isinstance(self.source, dict):
                rows = _on_device(self.source, self.device)
                n = min(len(rows["t"]), self.n_batches * self.batch_size)
                self.batches = [{k: v[i:i + self.batch_size] for k, v in rows.items()}
                                for i in range(0, n, self.batch_size)]
            else:
                for batch in self.source.iter_torch_batches(batch_size=self.batch_size, device=self.device):
                    if len(self.batches) >= self.n_batches:
                        break
                    self.batches.append(batch)
        return iter(self.batches)


def validate(net, batches, device, mask=None) -> dict:
    losses, cosines = [], []
    for batch in batches:
        loss, grad, target = alignment_terms(net, batch, device, create_graph=False, mask=mask)
        losses.append(loss.item())
        cosines.append(mean_cosine(grad, target).item())
    return {"val_loss": float(np.mean(losses)), "val_cosine": float(np.mean(cosines))} if losses else {}


def align_loop_per_worker(config: dict) -> None:
    job: AlignJob = config["job"]
    spec = job.spec
    rank, world, device = train_worker_setup(job.threads, job.local_run)
    quiet_ray_data()
    torch.manual_seed(job.seed)  # same initial weights on every worker

    sample_shape = tuple(job.sample_shape)
    net = build_reward_net(spec, *sample_shape)
    ema = make_ema(net, spec.ema_decay)
    optimizer = adam(net.parameters(), spec.learning_rate)
    state = restore_training(KIND, net, ema, optimizer, job.local_run)
    start = int(state["step"]) if state else 0
    net.to(device)
    ema.to(device)
    train_shard = dataset_shard("train", job.local_run)
    batch = max(1, spec.batch_size // world)
    val = ValidationBatches(dataset_shard("val", job.local_run), batch, spec.val_batches, device) \
        if job.has_val else None

    def batches():
        """Epoch after epoch; the source (and its seeded shuffle) made at the first step, not for a finished run."""
        source = EpochSource(train_shard, batch, device, job.cache, seed=job.seed * 1009 + rank + start)
        while True:
            yield from source.epoch()

    data = batches()
    # the entries the loss compares, once: unseen columns and inpainted entries left out
    mask = loss_mask(sample_shape, getattr(net, "input_dims", None), job.loss_mask, device)

    def step(i: int):
        loss, grad, target = alignment_terms(net, next(data), device, create_graph=True, mask=mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(net, world)
        if spec.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), spec.grad_clip)
        optimizer.step()
        ema.update_parameters(net)
        return loss, {"cosine": mean_cosine(grad.detach(), target).item()}

    def progress(metrics: dict) -> str:
        extra = f" val_loss {metrics['val_loss']:.5f} val_cos {metrics['val_cosine']:.3f}" \
            if "val_loss" in metrics else ""
        return (f"loss {metrics['loss']:.5f} cos {metrics['cosine']:.3f}{extra} "
                f"({metrics['samples_per_s']:.0f} samples/s)")

    loop = TrainingLoop(
        label=job.label, loss_name="reward alignment", total_steps=spec.train_steps, log_every=spec.log_every,
        checkpoint_every=spec.checkpoint_every, batch=batch, world=world, rank=rank, device=device,
        checkpoint_config=sample_reward_config(spec, sample_shape, job.normalizer),
        checkpoint_state=lambda at: training_state(net, ema, optimizer, at), progress=progress,
        validate=(lambda: validate(ema.module, val, device, mask)) if val is not None else None,
        advice="lower reward.learning_rate or set reward.grad_clip", local_run=job.local_run)
    loop.run(step, start)


def shard_datasets(shard_dir, materialize: bool | None = None, remote=None) -> tuple[dict, Manifest]:
    """Ray Datasets over the verified train/val shards of `shard_dir`.

    materialize None: keep them in the object store when they fit comfortably (each
    epoch then starts at once instead of re-reading every file); False: stream from disk.
    remote: (pyarrow filesystem, directory) holding the same shards, for Ray Data's readers
    on other nodes when `shard_dir` is local to this one.
    """
    manifest = verify_shards(shard_dir)
    datasets = {}
    total_bytes = sum(Path(p).stat().st_size for p in manifest.paths(shard_dir))
    if materialize is None:
        store = ray.available_resources().get("object_store_memory", 0)
        materialize = total_bytes * 4 < store  # parquet is compressed; decoded tensors are larger
    for split in ("train", "val"):
        paths = manifest.paths(shard_dir, split)
        if paths:
            if remote is None:
                ds = ray.data.read_parquet(paths)
            else:
                fs, directory = remote
                ds = ray.data.read_parquet([f"{directory}/{Path(p).name}" for p in paths], filesystem=fs)
            datasets[split] = ds.materialize() if materialize else ds
    if "train" not in datasets:
        raise ValueError(f"{shard_dir} has no training shards")
    return datasets, manifest


def train_reward(shard_dir, spec: RewardSpec, resources: ResourceSpec, storage_path, name: str,
                 seed: int = 0, normalizer: dict | None = None, materialize: bool | None = None,
                 max_failures: int = 0, callbacks=None, remote=None) -> ray.train.Result:
    """Train (or resume) the reward run `name` on the shards of `shard_dir`; returns Ray's Result.

    Shards are checked against their manifest first: a corrupt one fails here, naming the file.
    """
    manifest = Manifest.load(shard_dir)  # verified below
    fits = manifest is not None and manifest.rows("train") / max(1, resources.num_workers) \
        * triple_bytes(manifest.sample_shape) <= spec.memory_cache_mb * 2**20  # per worker
    if fits and resources.trains_locally:
        # One trainer in this process, triples that fit in memory: read them here with pyarrow. A Ray
        # Data execution costs 10-25 s on a busy 2-core machine; reading these files, well under one.
        manifest = verify_shards(shard_dir)
        datasets = {split: read_triples(manifest.paths(shard_dir, split)) for split in ("train", "val")
                    if manifest.paths(shard_dir, split)}
        if "train" not in datasets:
            raise ValueError(f"{shard_dir} has no training shards")
    else:
        if materialize is None and fits:
            materialize = False  # each worker reads its part once and keeps it: no object-store copy needed
        datasets, manifest = shard_datasets(shard_dir, materialize, remote)
    job = AlignJob(spec, manifest.sample_shape, normalizer, seed,
                   max(1, math.floor(resources.cpus_per_worker)), name, "val" in datasets,
                   cache=fits, loss_mask=manifest.loss_mask())
    return fit_training_run(align_loop_per_worker, job, resources, storage_path, name, max_failures, callbacks,
                            datasets=datasets, dataset_config=data_config(["train"]))
