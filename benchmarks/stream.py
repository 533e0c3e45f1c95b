"""Reward-alignment throughput: triples streamed by Ray Data from Parquet vs tensors in memory.

    python benchmarks/stream.py [--chains 256] [--steps 600]

Both feeds train the same reward MLP (double backward) on the same pre-generated
triples, in this process, with the same batch size and torch threads:
  (a) `ray.data.read_parquet(shards).iter_torch_batches(...)`, epoch after epoch, as the
      alignment trainer consumes them (materialised in the object store when they fit,
      streamed from disk otherwise; both are measured),
  (b) random batches indexed from tensors already in memory.
Then pre-generation rows/s (Ray tasks writing shards) against the floor of bare forward
passes of the two models that it needs. Last line: RATIO <streamed/in-memory samples/s>.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.data
import torch

from rrf_ray.diffusion.model import TrajectoryDiffuser
from rrf_ray.diffusion.spec import DiffusionSpec
from rrf_ray.engine.checkpoints import adam
from rrf_ray.engine.ray_runtime import init_ray
from rrf_ray.rrf.align import shard_datasets
from rrf_ray.rrf.reward_nets import alignment_terms
from rrf_ray.rrf.pregenerate import pregenerate
from rrf_ray.rrf.reward_nets import build_reward_net
from rrf_ray.rrf.spec import PregenSpec, RewardSpec

H, D, A = 32, 6, 2  # the CPU recipe of docs/method.md, Models: H 32, [action | x, y, vx, vy]


def train_rate(batches, spec: RewardSpec, steps: int, warmup: int = 20) -> float:
    """Samples/s of reward-alignment steps over `batches` (an iterator of dicts of tensors)."""
    torch.manual_seed(0)
    net = build_reward_net(spec, H, D)
    opt = adam(net.parameters(), spec.learning_rate)
    done = 0
    for batch in batches:
        if done == warmup:
            t = time.perf_counter()
        loss, _, _ = alignment_terms(net, batch, torch.device("cpu"), create_graph=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        done += 1
        if done == warmup + steps:
            break
    return steps * spec.batch_size / (time.perf_counter() - t)


def ray_batches(ds, batch_size: int):
    while True:  # epochs, as the trainer does
        yield from ds.iter_torch_batches(batch_size=batch_size, drop_last=True,
                                         local_shuffle_buffer_size=4 * batch_size)


def memory_batches(tensors: dict, batch_size: int):
    n = len(tensors["t"])
    g = torch.Generator().manual_seed(0)
    while True:
        idx = torch.randint(0, n, (batch_size,), generator=g)
        yield {k: v[idx] for k, v in tensors.items()}


def bare_forward_rate(base, expert, chains: int, reps: int = 20) -> float:
    """Rows/s of one process doing nothing but the two models' forward passes (1 thread, as a task)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x = torch.randn(chains, H, D)
    t = torch.full((chains,), 5)
    with torch.no_grad():
        base.posterior(x, t), expert.posterior(x, t)
        start = time.perf_counter()
        for _ in range(reps):
            base.posterior(x, t)
            expert.posterior(x, t)
        rate = reps * chains / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chains", type=int, default=256, help="chains per kind to pre-generate")
    p.add_argument("--steps", type=int, default=600, help="timed training steps per feed")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    init_ray(None, num_cpus=cores)
    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = RewardSpec(model_horizon=1, hidden=[256, 128], learning_rate=1e-3, batch_size=256)
    dspec = DiffusionSpec(n_timesteps=20, prediction="epsilon", clip_denoised=False, dim=16, dim_mults=[1, 2, 4])
    torch.manual_seed(0)
    base, expert = TrajectoryDiffuser(D, A, H, dspec).eval(), TrajectoryDiffuser(D, A, H, dspec).eval()

    with tempfile.TemporaryDirectory() as d:
        shards = Path(d) / "shards"
        pg = PregenSpec(chains_per_kind=args.chains, val_fraction=0.0)  # default 64 chains per shard
        warm = PregenSpec(chains_per_kind=cores * 4, chains_per_shard=4, val_fraction=0.0)
        pregenerate(base, expert, Path(d) / "warmup", warm, seed=1, progress=False)  # start the task workers
        start = time.perf_counter()
        manifest = pregenerate(base, expert, shards, pg, seed=0, progress=False)
        pregen_rate = manifest.rows() / (time.perf_counter() - start)
        workers = min(cores, len(manifest.shards))
        floor = bare_forward_rate(base, expert, pg.chains_per_shard) * workers

        table = pq.read_table(manifest.paths(shards))
        tensors = {c: torch.from_numpy(table[c].combine_chunks().to_numpy_ndarray().copy())
                   for c in ("x_next", "x_base", "x_expert")}
        tensors["t"] = torch.from_numpy(table["t"].to_numpy().astype(np.int64))

        memory = train_rate(memory_batches(tensors, spec.batch_size), spec, args.steps)
        datasets, _ = shard_datasets(shards)  # the trainer's default: materialised when it fits
        streamed = train_rate(ray_batches(datasets["train"], spec.batch_size), spec, args.steps)
        from_disk = train_rate(ray_batches(ray.data.read_parquet(manifest.paths(shards)), spec.batch_size),
                               spec, args.steps)
        memory = (memory + train_rate(memory_batches(tensors, spec.batch_size), spec, args.steps)) / 2

    print(f"{manifest.rows()} triples of [{H}, {D}] in {len(manifest.shards)} shards; reward MLP {spec.hidden}, "
          f"batch {spec.batch_size}, {torch.get_num_threads()} torch threads")
    print(f"in-memory tensors:                 {memory:9.0f} samples/s")
    print(f"Ray Data from Parquet (default):   {streamed:9.0f} samples/s")
    print(f"Ray Data from Parquet (no cache):  {from_disk:9.0f} samples/s (re-reads every epoch)")
    print(f"pre-generation: {pregen_rate:9.0f} rows/s vs bare forward floor {floor:9.0f} rows/s "
          f"({pregen_rate / floor:.2f} of it; {workers} tasks at a time)")
    print(f"RATIO {streamed / memory:.3f}")


if __name__ == "__main__":
    main()
