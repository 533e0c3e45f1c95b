"""Algorithm 4 as a Ray Train run: learn R_phi by backpropagating a plan-to-expert distance through guided sampling.

Each step takes a batch of expert K-row segments, samples plans of the frozen base diffuser
from their first states guided by R_phi (`guided_sample_with_grad`: second derivatives of R_phi,
the last `backprop_steps` reverse steps differentiable), compares the plans' first K rows with
the segments by the metric M (paired MSE or unbiased MMD²) and steps phi. Epochs pass over the
segments in a seeded order; the order, the sampler's noise and phi are checkpointed, so a
rebuilt run resumes. Several workers split each batch and average phi's gradients by hand
(DistributedDataParallel does not support the double backward through the guide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import torch
from torch import nn

from rrf_ray.engine.checkpoints import (
    LocalRun,
    adam,
    make_ema,
    restore_training,
    training_state,
)
from rrf_ray.engine.spec import ResourceSpec
from rrf_ray.engine.training import TrainingLoop, average_gradients, fit_training_run, train_worker_setup
from rrf_ray.irl.spec import Algorithm4Spec
from rrf_ray.irl.reward_net import PlanMLPReward, algorithm4_loss, build_irl_reward, trajectory_loss

KIND = "irl_reward"


def irl_reward_config(spec: Algorithm4Spec, metric: str, horizon: int, transition_dim: int,
                      normalizer: dict | None) -> dict:
    return {"kind": KIND, "irl": spec.model_dump(mode="json"), "metric": metric, "horizon": horizon,
            "transition_dim": transition_dim, "normalizer": normalizer}


def load_irl_reward(path) -> PlanMLPReward:
    """A learned reward from its checkpoint directory, ready to guide or score normalised windows."""
    from rrf_ray.engine.checkpoints import as_directory, read_checkpoint

    with as_directory(path) as d:
        config, state = read_checkpoint(d, KIND)
    net = build_irl_reward(Algorithm4Spec.model_validate(config["irl"]), config["horizon"], config["transition_dim"])
    net.load_state_dict(state["ema"])
    return net.eval()


@dataclass
class IRLJob:
    segments: object  # ObjectRef to (N, K, D) normalised expert segments, or the array
    base_dir: str
    spec: Algorithm4Spec
    metric: str
    seed: int
    threads: int
    label: str
    local_run: LocalRun | None = None


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The seeded order of the segments in one epoch (recomputed on resume, not stored)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def train_loop_per_worker(config: dict) -> None:
    from rrf_ray.diffusion.checkpoint import load_diffuser

    job: IRLJob = config["job"]
    spec = job.spec
    rank, world, device = train_worker_setup(job.threads, job.local_run)
    segments = ray.get(job.segments) if isinstance(job.segments, ray.ObjectRef) else job.segments
    segments = torch.tensor(np.asarray(segments), dtype=torch.float32, device=device)
    diffuser = load_diffuser(job.base_dir, device=device)
    model = diffuser.model.eval()
    k = spec.segment_steps
    dims = spec.compare_dims if spec.compare_dims is not None else list(range(model.transition_dim))

    torch.manual_seed(job.seed)
    net = build_irl_reward(spec, model.horizon, model.transition_dim).to(device)
    optimizer = adam(net.parameters(), spec.learning_rate[job.metric])
    ema = make_ema(net, 0.0)  # never updated: checkpoints' "ema" is phi itself
    state = restore_training(KIND, net, ema, optimizer, job.local_run)
    loss_fn = trajectory_loss(job.metric, spec.matern_nu)
    n = len(segments)
    batch = min(spec.batch_size, n)
    per_epoch = math.ceil(n / batch)
    per_worker = max(2, math.ceil(batch / world))

    def step(i: int):
        epoch, j = divmod(i, per_epoch)
        idx = epoch_order(job.seed, epoch, n)[j * batch:(j + 1) * batch]
        idx = idx[rank * per_worker:(rank + 1) * per_worker] if world > 1 else idx
        seg = segments[torch.as_tensor(idx, device=device)]
        generator = torch.Generator(device=device).manual_seed(job.seed * 1_000_003 + i * 101 + rank)
        loss, plans = algorithm4_loss(model, net, seg, spec, loss_fn, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(net, world)
        grad_norm = nn.utils.clip_grad_norm_(net.parameters(), spec.grad_clip or float("inf"))
        optimizer.step()
        with torch.no_grad():
            plan_mse = float(((plans[:, :k, dims] - seg[:, :, dims]) ** 2).mean())
        return loss.detach(), {"plan_mse": plan_mse, "grad_norm": float(grad_norm)}

    loop = TrainingLoop(
        label=job.label, loss_name=job.metric, total_steps=spec.epochs * per_epoch,
        log_every=spec.log_every, checkpoint_every=spec.checkpoint_every, batch=per_worker, world=world,
        rank=rank, device=device,
        checkpoint_config=irl_reward_config(spec, job.metric, model.horizon, model.transition_dim,
                                            diffuser.normalizer.to_dict() if diffuser.normalizer else None),
        checkpoint_state=lambda at: training_state(net, ema, optimizer, at),
        progress=lambda m: f"{job.metric} {m['loss']:.4g}, plan MSE {m['plan_mse']:.4f} "
                           f"({m['samples_per_s']:.1f} plans/s)",
        advice="lower irl.learning_rate or irl.guidance.scale, or set irl.grad_clip", local_run=job.local_run)
    loop.run(step, int(state["step"]) if state else 0)


def train_irl_reward(segments: np.ndarray, base_dir, spec: Algorithm4Spec, metric: str, resources: ResourceSpec,
                     storage_path, name: str, seed: int = 0, max_failures: int = 0, callbacks=None) -> ray.train.Result:
    """Train (or resume) the Algorithm 4 run `name`; `result.checkpoint` holds the reward (load_irl_reward)."""
    job = IRLJob(ray.put(np.asarray(segments, dtype=np.float32)), str(base_dir), spec, metric, seed,
                 max(1, math.floor(resources.cpus_per_worker)), name)
    return fit_training_run(train_loop_per_worker, job, resources, storage_path, name, max_failures, callbacks)


def segment_mse(model, segments: np.ndarray, reward, guidance, k: int, dims=None, seed: int = 0) -> tuple[float, float]:
    """K-row MSE of plans from the segments' first states to the segments: (guided by `reward`, unguided).

    Both draw the same noise, so the difference is the guide's doing alone: learning has moved the
    base's plans towards the experts when the first is below the second.
    """
    from rrf_ray.irl.selection import plan_distance

    return (plan_distance(model, segments, reward, guidance, k, dims, seed),
            plan_distance(model, segments, None, None, k, dims, seed))
