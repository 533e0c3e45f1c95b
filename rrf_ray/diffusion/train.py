"""Training trajectory diffusers with Ray Train (Train V2's `TorchTrainer`).

The windows go to the object store once; each worker samples its own batches from them
(DDP when there are several workers). Every `checkpoint_every` steps the model, EMA,
optimiser and RNG states are reported as a checkpoint, so a run rebuilt with the same
`storage_path` and `name` continues from the last one instead of starting over.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn

from rrf_ray.config import DiffusionSpec, ResourceSpec
from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.checkpoints import (LocalRun, adam, as_directory, make_ema, read_checkpoint, report_metrics,
                                 report_with_checkpoint, restore_training, training_state)
from rrf_ray.diffusion.checkpoint import KIND, diffuser_config
from rrf_ray.diffusion.model import TrajectoryDiffuser
from rrf_ray.ray_utils import fit_training_run, prepare_model, say, train_worker_setup


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message says at which step."""


class _Loss(nn.Module):
    """The diffusion loss as a module's forward, so DDP's gradient hooks see it."""

    def __init__(self, diffuser: TrajectoryDiffuser, condition_on_start: bool):
        super().__init__()
        self.diffuser = diffuser
        self.condition_on_start = condition_on_start

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        cond = {0: x0[:, 0, self.diffuser.action_dim:]} if self.condition_on_start else None
        return self.diffuser.loss(x0, cond)


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
    step = resumed_from = int(state["step"]) if state else 0
    if state:
        rng.bit_generator.state = state["rng"][rank % len(state["rng"])]
    ema.to(device)
    loss_module = prepare_model(_Loss(diffuser, job.condition_on_start), job.local_run)
    diffuser = _unwrap(loss_module).diffuser
    batch = max(1, spec.batch_size // world)

    if rank == 0:
        what = f"resuming at step {step}" if resumed_from else "starting"
        say(f"[{job.label}] {what}: {spec.train_steps} steps, batch {batch} x {world} worker(s) on {device}")
    losses, t_last = [], time.perf_counter()
    steady = None  # (time, step) at the first report: throughput after warm-up
    if step >= spec.train_steps:  # rebuilt after it had finished: hand back the final checkpoint
        metrics = {"step": step, "loss": float("nan"), "samples_per_s": 0.0, "resumed_from_step": resumed_from}
        _report_with_checkpoint(job, metrics, diffuser, ema, optimizer, rng, windows, rank, world)
    while step < spec.train_steps:
        x0 = torch.from_numpy(windows.sample(rng, batch)).to(device)
        loss = loss_module(x0)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"[{job.label}] diffusion loss is {loss.item()} at step {step}: stopping "
                "(lower the learning rate, or check the data for NaNs)"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        losses.append(loss.item())
        if step >= spec.ema_start and step % spec.ema_every == 0:
            ema.update_parameters(diffuser)

        last = step == spec.train_steps
        if step % spec.log_every == 0 or last or step % spec.checkpoint_every == 0:
            dt = time.perf_counter() - t_last
            now = time.perf_counter()
            metrics = {
                "step": step,
                "loss": float(np.mean(losses)),
                "samples_per_s": len(losses) * batch * world / max(dt, 1e-9),
                "resumed_from_step": resumed_from,
            }
            if steady is None:
                steady = (now, step)
            elif step > steady[1]:
                metrics["steady_samples_per_s"] = (step - steady[1]) * batch * world / (now - steady[0])
            losses, t_last = [], now
            if rank == 0:
                say(f"[{job.label}] step {step}/{spec.train_steps} loss {metrics['loss']:.4f} "
                    f"({metrics['samples_per_s']:.0f} samples/s)")
            if step % spec.checkpoint_every == 0 or last:
                _report_with_checkpoint(job, metrics, diffuser, ema, optimizer, rng, windows, rank, world)
            else:
                report_metrics(metrics, job.local_run)


def _report_with_checkpoint(job, metrics, diffuser, ema, optimizer, rng, windows, rank, world) -> None:
    rng_states = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(rng_states, rng.bit_generator.state)
    else:
        rng_states = [rng.bit_generator.state]

    def state():
        return training_state(diffuser, ema, optimizer, metrics["step"], rng=rng_states)

    report_with_checkpoint(metrics, rank, diffuser_config(diffuser, windows.normalizer), state, job.local_run)


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
