"""Training trajectory diffusers with Ray Train (Train V2's `TorchTrainer`).

The windows go to the object store once; each worker samples its own batches from them
(DDP when there are several workers). Every `checkpoint_every` steps the model, EMA,
optimiser and RNG states are reported as a checkpoint, so a run rebuilt with the same
`storage_path` and `name` continues from the last one instead of starting over.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.diffusion.checkpoint import KIND, diffuser_config
from rrf_ray.diffusion.model import DiffusionLoss, TrajectoryDiffuser
from rrf_ray.diffusion.spec import DiffusionSpec
from rrf_ray.engine.checkpoints import (
    LocalRun,
    adam,
    as_directory,
    make_ema,
    read_checkpoint,
    restore_training,
    training_state,
)
from rrf_ray.engine.spec import ResourceSpec
from rrf_ray.engine.training import TrainingLoop, fit_training_run, prepare_model, train_worker_setup


@dataclass
class DiffuserJob:
    """What each Ray Train worker needs (pickled into the train loop config)."""

    windows: object  # ObjectRef to TrajectoryWindows
    spec: DiffusionSpec
    seed: int
    threads: int
    label: str
    condition_on_start: bool = True
    init_weights: object = None  # ObjectRef to a state dict to start from (fine-tuning), or None
    local_run: LocalRun | None = None  # set when the run is in local mode (fit_training_run)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def train_loop_per_worker(config: dict) -> None:
    job: DiffuserJob = config["job"]
    spec = job.spec
    rank, world, device = train_worker_setup(job.threads, job.local_run)
    windows: TrajectoryWindows = ray.get(job.windows) if isinstance(job.windows, ray.ObjectRef) else job.windows

    torch.manual_seed(job.seed * 1009 + rank)
    rng = np.random.default_rng([job.seed, rank])
    diffuser = TrajectoryDiffuser(windows.transition_dim, windows.action_dim, windows.horizon, spec)
    if job.init_weights is not None:
        diffuser.load_state_dict(ray.get(job.init_weights))  # a resumed checkpoint below overrides it
    ema = make_ema(diffuser, spec.ema_decay)
    optimizer = adam(diffuser.parameters(), spec.learning_rate)
    state = restore_training(KIND, diffuser, ema, optimizer, job.local_run)
    if state:
        rng.bit_generator.state = state["rng"][rank % len(state["rng"])]
    ema.to(device)
    loss_module = prepare_model(DiffusionLoss(diffuser, job.condition_on_start), job.local_run)
    diffuser = _unwrap(loss_module).diffuser
    batch = max(1, spec.batch_size // world)

    def step(i: int):
        x0 = torch.from_numpy(windows.sample(rng, batch)).to(device)
        loss = loss_module(x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i + 1 >= spec.ema_start and (i + 1) % spec.ema_every == 0:
            ema.update_parameters(diffuser)
        return loss, {}

    def checkpoint_state(at: int) -> dict:
        """Every rank's RNG state (gathered, so every rank calls this), for each to resume its own draws."""
        rng_states = [None] * world
        if world > 1:
            torch.distributed.all_gather_object(rng_states, rng.bit_generator.state)
        else:
            rng_states = [rng.bit_generator.state]
        return training_state(diffuser, ema, optimizer, at, rng=rng_states)

    loop = TrainingLoop(
        label=job.label, loss_name="diffusion", total_steps=spec.train_steps, log_every=spec.log_every,
        checkpoint_every=spec.checkpoint_every, batch=batch, world=world, rank=rank, device=device,
        checkpoint_config=diffuser_config(diffuser, windows.normalizer), checkpoint_state=checkpoint_state,
        progress=lambda m: f"loss {m['loss']:.4f} ({m['samples_per_s']:.0f} samples/s)",
        advice="lower the learning rate, or check the data for NaNs", local_run=job.local_run,
        finished_throughput=True)
    loop.run(step, int(state["step"]) if state else 0)


def train_diffuser(windows: TrajectoryWindows, spec: DiffusionSpec, resources: ResourceSpec,
                   storage_path, name: str, seed: int = 0, max_failures: int = 0,
                   condition_on_start: bool = True, init_from=None, callbacks=None) -> ray.train.Result:
    """Train (or resume) a diffuser run `name` under `storage_path`; returns Ray's Result.

    `init_from`: a diffuser checkpoint whose (EMA) weights the model starts from, to fine-tune
    it; it must have the same architecture. `result.checkpoint` holds the final model;
    `load_diffuser(result.checkpoint)` loads it.
    """
    init = None
    if init_from is not None:
        with as_directory(init_from) as d:
            config, state = read_checkpoint(d, KIND)
        if (config["transition_dim"], config["horizon"]) != (windows.transition_dim, windows.horizon):
            raise ValueError(f"cannot fine-tune {init_from}: it models windows of "
                             f"{config['horizon']} x {config['transition_dim']}, these are "
                             f"{windows.horizon} x {windows.transition_dim}")
        init = ray.put(state["ema"])
    job = DiffuserJob(ray.put(windows), spec, seed, max(1, math.floor(resources.cpus_per_worker)), name,
                      condition_on_start, init)
    return fit_training_run(train_loop_per_worker, job, resources, storage_path, name, max_failures, callbacks)
