"""What Ray costs a Maze2D trial: the sweep's trial path against the same work as plain calls.

    python benchmarks/trial_overhead.py [--profile maze2d-smoke] [--maze umaze] [--goal 3] [--base-steps 500]

Setup, not timed: a private local Ray (the profile's logical CPUs), the maze's base and
expert datasets, a base diffuser (`--base-steps`: its quality does not matter here).

Timed, one after the other, same sizes and seeds:
  sweep: one trial through the Maze2D sweep's trial stage: a Tune trial that fine-tunes the
         expert, writes Algorithm-1 triple shards, trains the reward on them and scores
         held-out windows. With the profile's 1-CPU workers every phase runs in the trial's
         own process (LocalRun checkpoints and Tune reports, shards written in process,
         triples read back with pyarrow); with more workers or a GPU, Ray Train workers,
         Ray tasks and Ray Data;
  bare:  the same phases as plain function calls in this process, on one torch thread
         (what a Ray Train worker and a shard task use): the expert's fine-tuning loop,
         `noised_triples` written to the same Parquet shards, the alignment loop on the
         triples in memory, `evaluate_reward`.
Last line: RATIO <bare_seconds / sweep_seconds> (1.0: Ray costs nothing).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from rrf_ray.diffusion.checkpoint import load_diffuser
from rrf_ray.engine.checkpoints import adam, make_ema
from rrf_ray.engine.loading import load_spec
from rrf_ray.engine.ray_runtime import init_ray
from rrf_ray.engine.stages import SweepPaths, run_stage
from rrf_ray.engine.storage import SweepStorage
from rrf_ray.maze2d.evaluation import evaluate_reward
from rrf_ray.maze2d.stages import STAGE_BASE, STAGE_TRIALS, base_key, make_datasets, train_base, trial_id, windows
from rrf_ray.rrf.reward_nets import alignment_terms
from rrf_ray.rrf.extract import draw_windows
from rrf_ray.rrf.pregenerate import noised_triples
from rrf_ray.rrf.reward_nets import build_reward_net
from rrf_ray.rrf.shards import triples_table, write_shard


def sweep_trial(spec, storage, maze: str, goal: int, seed: int) -> tuple[float, dict]:
    from ray import tune

    from rrf_ray.maze2d.stages import _unpack_trial

    t0 = time.perf_counter()
    grid = run_stage(STAGE_TRIALS, _unpack_trial, {"trial": tune.grid_search([{"maze": maze, "goal": goal,
                                                                               "seed": seed}])},
                     spec, storage, False, ["step", "loss", "goal_distance"])
    seconds = time.perf_counter() - t0
    result = grid[0]
    if result.error is not None:
        raise RuntimeError(f"the sweep's trial failed: {result.error}")
    return seconds, result.metrics


def bare_trial(spec, paths: SweepPaths, maze: str, goal: int, seed: int, out: Path) -> tuple[float, dict]:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    phases = {}
    base_dir = paths.artifacts.path("diffusers", base_key(spec, maze, seed))
    base = load_diffuser(base_dir)
    normalizer = base.normalizer

    # expert: fine-tune a copy of the base on the expert windows (the trial's loop, minus Ray Train)
    t = time.perf_counter()
    expert_data = windows(spec, paths, maze, goal, "train", normalizer)
    espec = spec.expert.diffusion(spec.diffusion)
    torch.manual_seed(seed * 1009)
    rng = np.random.default_rng([seed, 0])
    expert = load_diffuser(base_dir).model.train()
    ema = make_ema(expert, espec.ema_decay)
    opt = adam(expert.parameters(), espec.learning_rate)
    for step in range(1, espec.train_steps + 1):
        x0 = torch.from_numpy(expert_data.sample(rng, espec.batch_size))
        loss = expert.loss(x0, {0: x0[:, 0, expert.action_dim:]})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= espec.ema_start and step % espec.ema_every == 0:
            ema.update_parameters(expert)
    expert = ema.module.eval()
    phases["expert_s"] = time.perf_counter() - t

    # triples: Algorithm 1 on mixed base + expert windows, written as the same shards
    t = time.perf_counter()
    p = spec.pregen
    rng = np.random.default_rng(seed)
    base_train = windows(spec, paths, maze, None, "train", normalizer)
    x0 = draw_windows(lambda role, split: base_train if role == "base" else expert_data, p, "train", rng)
    x0 = x0.take(rng.integers(len(x0), size=p.noised_windows))
    generator = torch.Generator().manual_seed(seed)
    parts = []
    for i, start in enumerate(range(0, p.noised_windows, p.noised_per_shard)):
        part = noised_triples(base.model, expert, x0.take(slice(start, start + p.noised_per_shard)), p.grad_at,
                              generator, torch.device("cpu"))
        n = len(part["t"])
        write_shard(out / f"shard-{i:05d}.parquet", triples_table(**part, chain_kind=np.zeros(n),
                                                                  chain_id=np.arange(start, start + n)))
        parts.append(part)
    triples = {k: torch.from_numpy(np.concatenate([q[k] for q in parts])) for k in parts[0]}
    phases["pregen_s"] = time.perf_counter() - t

    # reward: the alignment loop (double backward) on the triples in memory
    t = time.perf_counter()
    r = spec.reward
    torch.manual_seed(seed)
    net = build_reward_net(r, *triples["x_next"].shape[1:])
    reward_ema = make_ema(net, r.ema_decay)
    opt = adam(net.parameters(), r.learning_rate)
    order = torch.Generator().manual_seed(seed)
    n_train = len(triples["t"])
    for _ in range(r.train_steps):
        idx = torch.randint(0, n_train, (r.batch_size,), generator=order)
        loss, _, _ = alignment_terms(net, {k: v[idx] for k, v in triples.items()}, "cpu", create_graph=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if r.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), r.grad_clip)
        opt.step()
        reward_ema.update_parameters(net)
    scorer = reward_ema.module.eval()
    phases["reward_s"] = time.perf_counter() - t

    t = time.perf_counter()
    held_base = windows(spec, paths, maze, None, "heldout", normalizer, for_evaluation=True)
    held_expert = windows(spec, paths, maze, goal, "heldout", normalizer, for_evaluation=True)

    @torch.no_grad()
    def score(x):
        x = torch.from_numpy(x)
        return scorer(x, torch.zeros(len(x), dtype=torch.long)).numpy()

    metrics = evaluate_reward(score, spec.maze(maze), goal, held_base, held_expert, out,
                              max_windows=spec.evaluation.max_windows, seed=seed)
    phases["eval_s"] = time.perf_counter() - t
    return time.perf_counter() - t0, {**metrics.as_dict(), **phases}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="maze2d-smoke")
    parser.add_argument("--maze", default="umaze")
    parser.add_argument("--goal", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-steps", type=int, default=500)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    spec = load_spec(args.profile, [f"diffusion.train_steps={args.base_steps}",
                                    f"diffusion.checkpoint_every={args.base_steps}",
                                    f"diffusion.ema_start={min(args.base_steps // 2, 1000)}",
                                    f"seeds=[{args.seed}]", f"goals=[{args.goal}]", *args.overrides])
    spec = spec.model_copy(update={"mazes": {args.maze: spec.mazes[args.maze]}})
    with tempfile.TemporaryDirectory() as tmp:
        storage = SweepStorage(tmp, spec.name)
        paths = SweepPaths(storage)
        init_ray(None, num_cpus=spec.resources.num_cpus)
        print(f"setup: datasets and a {args.base_steps}-step base diffuser of {args.maze} (not timed)", flush=True)
        make_datasets(spec, paths, progress=False)
        from ray import tune

        run_stage(STAGE_BASE, train_base, {"maze": tune.grid_search([args.maze]), "seed": tune.grid_search([args.seed])},
                  spec, storage, False, ["step", "loss"])

        sweep_s, sweep_m = sweep_trial(spec, storage, args.maze, args.goal, args.seed)
        out = Path(tmp) / "bare" / trial_id(args.maze, args.goal, args.seed)
        out.mkdir(parents=True)
        bare_s, bare_m = bare_trial(spec, paths, args.maze, args.goal, args.seed, out)

    resources = spec.resources
    mode = "in the trial's process" if resources.trains_locally else f"{resources.num_workers} Ray Train worker(s)"
    print(f"\n{args.profile}, {args.maze} goal {args.goal}, seed {args.seed}; training runs: {mode}")
    print(f"{'phase':<10} {'sweep s':>9} {'bare s':>9}")
    for phase in ("expert_s", "pregen_s", "reward_s", "eval_s"):
        print(f"{phase[:-2]:<10} {sweep_m.get(phase, math.nan):>9.1f} {bare_m[phase]:>9.1f}")
    print(f"{'total':<10} {sweep_s:>9.1f} {bare_s:>9.1f}   (sweep total: the whole Tune stage)")
    print(f"peak distance: sweep {sweep_m.get('goal_distance', math.nan):.2f}, bare {bare_m['goal_distance']:.2f}")
    print(f"RATIO {bare_s / sweep_s:.3f}")


if __name__ == "__main__":
    main()
