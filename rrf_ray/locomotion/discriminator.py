"""The discriminator baseline (docs/locomotion.md): the reward's architecture trained with BCE to tell
expert windows (label 1) from base windows (label 0), guiding by grad log sigmoid(D(x, t)).

Guidance acts on noisy x_t, so, like any classifier used for guidance, D is trained on windows
noised by the diffusers' forward process at random steps t (with the first state inpainted, as
the planner sees them). Held-out accuracy thresholds the logits at 0. Trained by Ray Train with
checkpoints (a run rebuilt with the same storage path and name resumes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from rrf_ray.diffusion.model import apply_conditioning
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
from rrf_ray.locomotion.spec import DiscriminatorSpec
from rrf_ray.rrf.reward_nets import build_reward_net, reward_config
from rrf_ray.rrf.spec import RewardSpec

KIND = "discriminator"


def noise_schedule(diffusion: DiffusionSpec) -> DDPMScheduler:
    """The diffusers' forward process (same cosine schedule and T)."""
    return DDPMScheduler(num_train_timesteps=diffusion.n_timesteps, beta_schedule="squaredcos_cap_v2")


def noised(x0: torch.Tensor, t: torch.Tensor, scheduler: DDPMScheduler, action_dim: int,
           generator: torch.Generator | None = None) -> torch.Tensor:
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    x_t = scheduler.add_noise(x0, noise, t)
    return apply_conditioning(x_t, {0: x0[:, 0, action_dim:]}, action_dim)


def bce_loss(net: nn.Module, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(net(x_t, t), labels)


def log_sigmoid_guide(net: nn.Module):
    """The guide of the baseline: log sigma(D(x, t)), whose input-gradient steers the planner."""
    def guide(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(net(x, t))
    return guide


@torch.no_grad()
def accuracy(net: nn.Module, base: np.ndarray, expert: np.ndarray, device) -> float:
    """Balanced held-out accuracy at t = 0 (logits thresholded at 0)."""
    correct, total = 0, 0
    for windows, label in ((base, 0), (expert, 1)):
        for i in range(0, len(windows), 1024):
            x = torch.as_tensor(windows[i:i + 1024], device=device)
            logits = net(x, torch.zeros(len(x), dtype=torch.long, device=device))
            correct += int(((logits > 0) == bool(label)).sum())
            total += len(x)
    return correct / max(total, 1)


@dataclass
class DiscriminatorJob:
    base: object  # ObjectRef to TrajectoryWindows (train)
    expert: object
    val: object  # ObjectRef to (base windows, expert windows) held out, normalised arrays
    spec: DiscriminatorSpec
    reward: RewardSpec  # the architecture
    diffusion: DiffusionSpec  # the noise schedule
    normalizer: dict
    seed: int
    threads: int
    label: str
    local_run: LocalRun | None = None  # set when the run is in local mode (fit_training_run)


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, nn.parallel.DistributedDataParallel) else module


def train_loop_per_worker(config: dict) -> None:
    job: DiscriminatorJob = config["job"]
    spec = job.spec
    rank, world, device = train_worker_setup(job.threads, job.local_run)
    base, expert = ray.get(job.base), ray.get(job.expert)
    val_base, val_expert = ray.get(job.val)
    torch.manual_seed(job.seed)
    rng = np.random.default_rng([job.seed, rank])
    generator = torch.Generator().manual_seed(job.seed * 1009 + rank)
    scheduler = noise_schedule(job.diffusion)
    net = build_reward_net(job.reward, base.horizon, base.transition_dim)
    ema = make_ema(net, spec.ema_decay)
    optimizer = adam(net.parameters(), spec.learning_rate)
    state = restore_training(KIND, net, ema, optimizer, job.local_run)
    ema.to(device)
    model = prepare_model(net, job.local_run)
    net = _unwrap(model)
    half = max(1, spec.batch_size // (2 * world))

    def step(i: int):
        x0 = torch.from_numpy(np.concatenate([base.sample(rng, half), expert.sample(rng, half)])).to(device)
        labels = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)
        t = torch.randint(0, job.diffusion.n_timesteps, (len(x0),), generator=generator).to(device)
        loss = bce_loss(model, noised(x0, t, scheduler, base.action_dim, generator), t, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update_parameters(net)
        return loss, {}

    def progress(metrics: dict) -> str:
        acc = f" val_acc {metrics['val_accuracy']:.3f}" if "val_accuracy" in metrics else ""
        return f"bce {metrics['loss']:.4f}{acc}"

    loop = TrainingLoop(
        label=job.label, loss_name="discriminator", total_steps=spec.train_steps, log_every=spec.log_every,
        checkpoint_every=spec.checkpoint_every, batch=2 * half, world=world, rank=rank, device=device,
        checkpoint_config={**reward_config(job.reward, base.horizon, base.transition_dim, job.normalizer),
                           "kind": KIND},
        checkpoint_state=lambda at: training_state(net, ema, optimizer, at), progress=progress,
        validate=lambda: {"val_accuracy": accuracy(ema.module, val_base, val_expert, device)},
        local_run=job.local_run, steady_throughput=False)
    loop.run(step, int(state["step"]) if state else 0)


def train_discriminator(base, expert, val_base: np.ndarray, val_expert: np.ndarray, spec: DiscriminatorSpec,
                        reward: RewardSpec, diffusion: DiffusionSpec, resources: ResourceSpec, storage_path,
                        name: str, seed: int = 0, callbacks=None) -> ray.train.Result:
    """Train (or resume) the discriminator run `name`: TrajectoryWindows `base` and `expert` in one
    normalised space (their normaliser is saved with the model)."""
    normalizer = base.normalizer.to_dict() if base.normalizer is not None else None
    job = DiscriminatorJob(ray.put(base), ray.put(expert),
                           ray.put((np.asarray(val_base, np.float32), np.asarray(val_expert, np.float32))),
                           spec, reward, diffusion, normalizer, seed, max(1, math.floor(resources.cpus_per_worker)),
                           name)
    return fit_training_run(train_loop_per_worker, job, resources, storage_path, name, 0, callbacks)


class TrainedDiscriminator:
    def __init__(self, net: nn.Module, config: dict, step: int):
        self.net, self.config, self.step = net.eval(), config, step

    def logits(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    def guide(self):
        return log_sigmoid_guide(self.net)


def load_discriminator(path, use_ema: bool = True, device: str = "cpu") -> TrainedDiscriminator:
    with as_directory(path) as d:
        config, state = read_checkpoint(d, KIND)
    net = build_reward_net(RewardSpec.model_validate(config["reward"]), config["horizon"], config["transition_dim"])
    net.load_state_dict(state["ema" if use_ema else "model"])
    return TrainedDiscriminator(net.to(device), config, int(state["step"]))
