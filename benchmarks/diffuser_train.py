"""Diffuser training throughput: a bare PyTorch loop against a 1-worker Ray Train run.

    python benchmarks/diffuser_train.py [--steps 400] [--paper-steps 3]

Both train the same smoke-size model (the CPU recipe of docs/method.md, Models: U-Net channels 16/32/64,
T = 20, H = 32, batch 64) on the same windows with the same torch thread count, and
both skip their first `log_every` steps as warm-up. Ray's figure is its steady
samples/s as reported by the training loop (checkpointing only at the end), so the
ratio is the cost of running inside Ray Train. Then the bare loop at the paper's Maze2D
size (H = 256, channels 32/128/256, T = 100, batch 128) for comparison with GPU runs.
Last line: RATIO <ray/bare>.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.diffusion.model import DiffusionLoss, TrajectoryDiffuser
from rrf_ray.diffusion.spec import DiffusionSpec
from rrf_ray.diffusion.train import train_diffuser
from rrf_ray.engine.checkpoints import adam
from rrf_ray.engine.ray_runtime import init_ray
from rrf_ray.engine.spec import ResourceSpec


def bare_samples_per_s(windows: TrajectoryWindows, spec: DiffusionSpec, steps: int, warmup: int) -> float:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    loss_module = DiffusionLoss(TrajectoryDiffuser(windows.transition_dim, windows.action_dim, windows.horizon, spec), True)
    opt = adam(loss_module.parameters(), spec.learning_rate)
    for i in range(warmup + steps):
        if i == warmup:
            t = time.perf_counter()
        loss = loss_module(torch.from_numpy(windows.sample(rng, spec.batch_size)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * spec.batch_size / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--paper-steps", type=int, default=3)
    args = p.parse_args()

    threads = torch.get_num_threads()
    init_ray(None, num_cpus=max(2, threads) + 1)
    data = np.random.default_rng(0).uniform(-1, 1, size=(2048, 32, 6)).astype(np.float32)
    windows = TrajectoryWindows.from_array(data, action_dim=2)
    warmup = 50
    spec = DiffusionSpec(n_timesteps=20, prediction="epsilon", clip_denoised=False, dim=16, dim_mults=[1, 2, 4],
                         learning_rate=1e-3, batch_size=64, train_steps=warmup + args.steps,
                         log_every=warmup, checkpoint_every=warmup + args.steps)

    bare = bare_samples_per_s(windows, spec, args.steps, warmup)
    with tempfile.TemporaryDirectory() as storage:
        result = train_diffuser(windows, spec, ResourceSpec(cpus_per_worker=threads), storage, "bench")
    ray_rate = result.metrics["steady_samples_per_s"]
    bare_after = bare_samples_per_s(windows, spec, args.steps, warmup)
    bare = (bare + bare_after) / 2  # bracket the Ray run: these machines are noisy

    paper = DiffusionSpec()  # rrf_ray/sweeps/maze2d.yaml's model: H = 256, dim 32, mults 1/4/8, T = 100
    paper_windows = TrajectoryWindows.from_array(
        np.random.default_rng(1).uniform(-1, 1, size=(256, 256, 6)).astype(np.float32), action_dim=2)
    paper_rate = bare_samples_per_s(paper_windows, paper, args.paper_steps, 1)

    n_params = sum(p.numel() for p in TrajectoryDiffuser(6, 2, 32, spec).parameters())
    print(f"smoke-size model: {n_params / 1e6:.2f}M parameters, H 32, batch 64, {threads} torch threads")
    print(f"bare PyTorch loop:        {bare:8.0f} samples/s")
    print(f"Ray Train, 1 worker:      {ray_rate:8.0f} samples/s (steady, after warm-up)")
    print(f"paper Maze2D size (bare): {paper_rate:8.1f} samples/s on {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print(f"RATIO {ray_rate / bare:.3f}")


if __name__ == "__main__":
    main()
