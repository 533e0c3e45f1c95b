"""Training trajectory diffusers with Ray Train (Train V2's `TorchTrainer`).

The windows go to the object store once; each worker samples its own batches from them
(DDP when there are several workers). Every `checkpoint_every` steps the model, EMA,
optimiser and RNG states are reported as a checkpoint, so a run rebuilt with the same
`storage_path` and `name` continues from the last one instead of starting over.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rrf_ray.config import DiffusionSpec, ResourceSpec
from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.diffusion.checkpoint import STATE_FILE, save_diffuser_checkpoint
from rrf_ray.diffusion.model import TrajectoryDiffuser
from rrf_ray.ray_utils import quiet_train_worker_logs, say


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


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def train_loop_per_worker(config: dict) -> None:
    job: DiffuserJob = config["job"]
    spec = job.spec
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    quiet_train_worker_logs()
    if device.type == "cpu":
        torch.set_num_threads(max(1, job.threads))
    windows: TrajectoryWindows = ray.get(job.windows) if isinstance(job.windows, ray.ObjectRef) else job.windows

    torch.manual_seed(job.seed * 1009 + rank)
    rng = np.random.default_rng([job.seed, rank])
    diffuser = TrajectoryDiffuser(windows.transition_dim, windows.action_dim, windows.horizon, spec)
    ema = AveragedModel(diffuser, multi_avg_fn=get_ema_multi_avg_fn(spec.ema_decay), use_buffers=True)
    optimizer = torch.optim.Adam(diffuser.parameters(), lr=spec.learning_rate)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        diffuser.load_state_dict(state["model"])
        ema.load_state_dict(state["ema_averager"])
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rng.bit_generator.state = state["rng"][rank % len(state["rng"])]
    resumed_from = step
    ema.to(device)
    loss_module = ray.train.torch.prepare_model(_Loss(diffuser, job.condition_on_start))
    diffuser = _unwrap(loss_module).diffuser
    batch = max(1, spec.batch_size // world)

    if rank == 0:
        what = f"resuming at step {step}" if resumed_from else "starting"
        say(f"[{job.label}] {what}: {spec.train_steps} steps, batch {batch} x {world} worker(s) on {device}")
    losses, t_last = [], time.perf_counter()
    steady = None  # (time, step) at the first report: throughput after warm-up
    if step >= spec.train_steps:  # rebuilt after it had finished: hand back the final checkpoint
        metrics = {"step": step, "loss": float("nan"), "samples_per_s": 0.0, "resumed_from_step": resumed_from}
        _report_with_checkpoint(metrics, diffuser, ema, optimizer, rng, windows, rank, world)
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
                _report_with_checkpoint(metrics, diffuser, ema, optimizer, rng, windows, rank, world)
            else:
                ray.train.report(metrics)


def _report_with_checkpoint(metrics, diffuser, ema, optimizer, rng, windows, rank, world) -> None:
    """Rank 0 writes the checkpoint; every rank reports (Train V2's report is collective)."""
    rng_states = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(rng_states, rng.bit_generator.state)
    else:
        rng_states = [rng.bit_generator.state]
    with tempfile.TemporaryDirectory() as d:
        checkpoint = None
        if rank == 0:
            ema_weights = ema.module.state_dict() if int(ema.n_averaged) > 0 else diffuser.state_dict()
            state = {
                "model": diffuser.state_dict(),
                "ema": ema_weights,
                "ema_averager": ema.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": metrics["step"],
                "rng": rng_states,
            }
            save_diffuser_checkpoint(d, diffuser, windows.normalizer, state)
            checkpoint = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=checkpoint)


def scaling_config(resources: ResourceSpec) -> ray.train.ScalingConfig:
    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(num_workers=resources.num_workers, use_gpu=resources.use_gpu,
                                   resources_per_worker=per_worker)


def train_diffuser(windows: TrajectoryWindows, spec: DiffusionSpec, resources: ResourceSpec,
                   storage_path, name: str, seed: int = 0, max_failures: int = 0,
                   condition_on_start: bool = True, callbacks=None) -> ray.train.Result:
    """Train (or resume) a diffuser run `name` under `storage_path`; returns Ray's Result.

    `result.checkpoint` holds the final model; `load_diffuser(result.checkpoint)` loads it.
    """
    from ray.train.torch import TorchTrainer

    storage = str(storage_path)
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    job = DiffuserJob(ray.put(windows), spec, seed, max(1, math.floor(resources.cpus_per_worker)), name,
                      condition_on_start)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        scaling_config=scaling_config(resources),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            callbacks=callbacks,
        ),
    )
    return trainer.fit()
