"""Maze2D generation speed against the raw PointMaze step rate, measured in one process.

    python benchmarks/datagen.py [--transitions 100000] [--workers 1] [--maze umaze]

Raw: `env.step` of the same PointMaze with random actions, no controller, no storage.
Generated: end-to-end `generate_maze2d` through Ray tasks into a Minari dataset on disk
(controller, noise, episode bookkeeping, transfer, HDF5 writes), per worker, after a
warm-up run so Ray worker start-up is not counted. Last line: RATIO <generated/raw>.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from rrf_ray.engine.ray_runtime import init_ray
from rrf_ray.maze2d.datasets import generate_maze2d
from rrf_ray.maze2d.mazes import Maze
from rrf_ray.maze2d.pointmaze import make_env
from rrf_ray.maze2d.spec import DataSpec


def raw_step_rate(maze: Maze, steps: int) -> float:
    env = make_env(maze)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, size=(steps, 2))
    t = time.perf_counter()
    for a in actions:
        env.step(a)
    dt = time.perf_counter() - t
    env.close()
    return steps / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--transitions", type=int, default=100_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--maze", default="umaze")
    args = p.parse_args()

    maze = Maze.default(args.maze)
    init_ray(None, num_cpus=max(2, args.workers), dashboard=False)
    spec = DataSpec()
    with tempfile.TemporaryDirectory() as root:
        generate_maze2d(maze, None, 2 * args.workers * spec.chunk_transitions // 5, 1, spec, root=root,
                        workers=args.workers, progress=False)  # warm-up: start the Ray workers
        raw = raw_step_rate(maze, 20_000)
        t = time.perf_counter()
        generate_maze2d(maze, None, args.transitions, 0, spec, root=root, workers=args.workers,
                        overwrite=True, progress=False)
        dt = time.perf_counter() - t
        raw_after = raw_step_rate(maze, 20_000)
    raw = (raw + raw_after) / 2  # bracket the run: these machines are noisy
    per_worker = args.transitions / dt / args.workers
    print(f"maze {args.maze}, {args.transitions} transitions, {args.workers} worker(s)")
    print(f"raw PointMaze env.step:        {raw:10.0f} steps/s")
    print(f"generated (Ray -> Minari):     {args.transitions / dt:10.0f} transitions/s in {dt:.1f} s")
    print(f"generated per worker:          {per_worker:10.0f} transitions/s")
    print(f"RATIO {per_worker / raw:.3f}")


if __name__ == "__main__":
    main()
