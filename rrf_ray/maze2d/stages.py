"""The Maze2D relative-reward sweep (`experiment: maze2d`), as its list of stages on the engine.

Stages, each idempotent (content-addressed artifacts under the sweep directory):
  1. datasets: base + expert Minari datasets of every maze (Ray tasks);
  2. base diffusers: one per maze (or per maze and seed), a Tune grid of Ray Train runs;
  3. trials: a Tune grid over maze x goal x seed; each trains the expert diffuser,
     pre-generates triples to Parquet, trains the reward on them through Ray Data and
     evaluates it on held-out windows, reporting every metric to Tune;
  4. the report (report.md, results.csv, figures).
`--resume` restores every stage from its state (Tuner.restore, resume_errored) and
reuses finished artifacts, so completed trials are not recomputed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from rrf_ray.engine.artifacts import artifact_key
from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.stages import (
    PhaseTimer,
    SweepPaths,
    copy_checkpoint,
    raise_if_any_failed,
    recorded_trial,
    run_stage,
    tune_report_callbacks,
    write_sweep_files,
)
from rrf_ray.engine.storage import SweepStorage
from rrf_ray.maze2d.spec import Maze2DSpec
from rrf_ray.rrf.extract import extraction_keys

STAGE_BASE, STAGE_TRIALS = "stage2-base-diffusers", "stage3-trials"


def goals_of(spec: Maze2DSpec, maze: str) -> list[int]:
    return spec.goals or list(range(1, len(spec.mazes[maze].goals) + 1))


def trial_id(maze: str, goal: int, seed: int) -> str:
    return f"{maze}-goal{goal}-seed{seed}"


def trial_table(spec: Maze2DSpec) -> list[dict]:
    return [{"trial_id": trial_id(m, g, s), "maze": m, "goal": g, "seed": s}
            for m in spec.mazes for g in goals_of(spec, m) for s in spec.seeds]


# -- keys: exactly the spec parts that determine each artifact --------------------------

def dataset_part(spec: Maze2DSpec, maze: str) -> dict:
    return {"maze": spec.mazes[maze].model_dump(mode="json"), "data": spec.data.fingerprint(),
            "data_seed": spec.data_seed}


def base_key(spec: Maze2DSpec, maze: str, seed: int) -> str:
    return artifact_key("base", dataset_part(spec, maze), spec.windows, spec.diffusion,
                        seed if spec.base_per_seed else None)


def expert_key(spec: Maze2DSpec, maze: str, goal: int, seed: int) -> str:
    return artifact_key("expert", base_key(spec, maze, seed), spec.expert, goal, seed)


def shards_key(spec: Maze2DSpec, maze: str, goal: int, seed: int) -> str:
    return extraction_keys(base_key(spec, maze, seed), expert_key(spec, maze, goal, seed), spec.pregen, spec.reward,
                           seed)[0]


def reward_key(spec: Maze2DSpec, maze: str, goal: int, seed: int) -> str:
    return extraction_keys(base_key(spec, maze, seed), expert_key(spec, maze, goal, seed), spec.pregen, spec.reward,
                           seed)[1]


def result_key(spec: Maze2DSpec, maze: str, goal: int, seed: int) -> str:
    """A trial's result.json: its reward, scored the way `evaluation` says."""
    return artifact_key("result", reward_key(spec, maze, goal, seed), spec.evaluation)


# -- stage 1: datasets ------------------------------------------------------------------

def dataset_ids(spec: Maze2DSpec, maze: str) -> list[tuple[int | None, int]]:
    """(goal or None for base, transitions) of every dataset a maze needs."""
    return [(None, spec.data.base_transitions)] + [(g, spec.data.expert_transitions) for g in goals_of(spec, maze)]


def _dataset_marker(did: str) -> str:
    """Remote storage: this file exists once dataset `did` has been pushed in full."""
    return f"datasets-complete/{did.replace('/', '__')}"


def make_datasets(spec: Maze2DSpec, paths: SweepPaths, progress: bool = True) -> None:
    from rrf_ray.maze2d.datasets import dataset_id, generate_maze2d

    storage = paths.storage
    for maze in spec.mazes:
        for goal, n in dataset_ids(spec, maze):
            did = dataset_id(maze, goal)
            pushed = storage.is_remote and storage.exists(_dataset_marker(did))
            if pushed:
                storage.pull(f"datasets/{did}")
            generate_maze2d(spec.maze(maze), goal, n, spec.data_seed, spec.data, root=paths.datasets,
                            workers=spec.data.workers, progress=progress)  # reuses an identical one
            if storage.is_remote and not pushed:
                storage.push(f"datasets/{did}")
                write_atomic(paths.root / _dataset_marker(did), "")
                storage.push(_dataset_marker(did))


def windows(spec: Maze2DSpec, paths: SweepPaths, maze: str, goal: int | None, split: str, normalizer=None,
            for_evaluation: bool = False):
    from rrf_ray.data.windows import load_windows
    from rrf_ray.maze2d.datasets import dataset_id, how_to_make

    w = spec.evaluation_windows if for_evaluation else spec.windows
    paths.storage.pull(f"datasets/{dataset_id(maze, goal)}")  # remote storage: this node's copy
    return load_windows(dataset_id(maze, goal), w.horizon, w.stride, split=split,
                        root=paths.datasets, normalizer=normalizer or "minmax", pad_end=w.pad_end,
                        how_to_make=how_to_make(maze, goal, paths.datasets))


# -- stage 2 and 3 trainables (run as Tune trials) --------------------------------------


def train_base(config: dict, spec: Maze2DSpec, storage: SweepStorage) -> None:
    """Tune trial: the base diffuser of one maze (and seed, if per-seed)."""
    from ray import tune

    from rrf_ray.diffusion.train import train_diffuser

    paths, maze, seed = SweepPaths(storage), config["maze"], config["seed"]
    key = base_key(spec, maze, seed)
    paths.artifacts.ensure("diffusers", key, lambda d: copy_checkpoint(
        train_diffuser(windows(spec, paths, maze, None, "train"), spec.diffusion, spec.resources, paths.train,
                       f"base-{maze}-{key}", seed=seed, callbacks=tune_report_callbacks()), d))
    tune.report({"done": 1, "artifact": key})


def run_trial(config: dict, spec: Maze2DSpec, storage: SweepStorage) -> None:
    """Tune trial: expert diffuser -> triples -> reward -> held-out evaluation, for one (maze, goal, seed)."""
    from ray import tune

    from rrf_ray.engine.ray_runtime import quiet_ray_data

    quiet_ray_data()
    paths = SweepPaths(storage)
    maze, goal, seed = config["maze"], config["goal"], config["seed"]
    tid = trial_id(maze, goal, seed)
    record = {"trial_id": tid, "maze": maze, "goal": goal, "seed": seed, "key": result_key(spec, maze, goal, seed)}
    tune.report(recorded_trial(paths, tid, record,
                               lambda: _trial_work(spec, paths, maze, goal, seed, paths.trial_dir(tid))))


def _trial_work(spec: Maze2DSpec, paths: SweepPaths, maze: str, goal: int, seed: int, out: Path) -> dict:
    from rrf_ray.diffusion.checkpoint import load_normalizer
    from rrf_ray.diffusion.train import train_diffuser
    from rrf_ray.maze2d.evaluation import evaluate_reward
    from rrf_ray.rrf.extract import extract_reward
    from rrf_ray.rrf.reward_nets import load_reward

    store = paths.artifacts
    timer = PhaseTimer()
    bkey = base_key(spec, maze, seed)
    base_dir = store.require("diffusers", bkey, f"the base diffuser of {maze} (stage 2)")
    normalizer = load_normalizer(base_dir)  # both models and the reward share one space
    loaded = {}

    def maze_windows(g: int | None, split: str, for_evaluation: bool = False):
        """This maze's windows in the base's normalisation, each set read from its dataset once per trial."""
        if (g, split, for_evaluation) not in loaded:
            loaded[g, split, for_evaluation] = windows(spec, paths, maze, g, split, normalizer, for_evaluation)
        return loaded[g, split, for_evaluation]

    ekey = expert_key(spec, maze, goal, seed)
    timer.start("expert")
    store.ensure("diffusers", ekey, lambda d: copy_checkpoint(train_diffuser(
            maze_windows(goal, "train"), spec.expert.diffusion(spec.diffusion), spec.resources, paths.train,
            f"expert-{maze}-g{goal}-{ekey}", seed=seed, init_from=base_dir if spec.expert.init == "base" else None,
            callbacks=tune_report_callbacks()), d))

    timer.stop()
    extraction = extract_reward(paths, bkey, ekey, lambda role, split: maze_windows(
        None if role == "base" else goal, split), spec.pregen, spec.reward, spec.resources, seed,
        f"reward-{maze}-g{goal}", callbacks=tune_report_callbacks())

    timer.start("eval")
    reward = load_reward(extraction.path)
    held_base, held_expert = maze_windows(None, "heldout", True), maze_windows(goal, "heldout", True)
    metrics = evaluate_reward(lambda x: reward.score(x, t=spec.evaluation.t), spec.maze(maze), goal, held_base,
                              held_expert, out, max_windows=spec.evaluation.max_windows, seed=seed,
                              state_reward=spec.reward.is_state_reward(held_base.action_dim))
    return {**metrics.as_dict(), **extraction.summary(), **extraction.seconds, **timer.stop()}


def run_sweep(spec: Maze2DSpec, storage: SweepStorage, resume: bool = False, address: str | None = None) -> Path:
    """All four stages; returns the report path (in the local directory or mirror)."""
    from ray import tune

    from rrf_ray.engine.ray_runtime import init_ray, quiet_ray_data
    from rrf_ray.maze2d.report import write_report

    paths = SweepPaths(storage)
    sweep_dir = storage.local
    write_sweep_files(storage, {"spec.json": spec.model_dump_json(indent=1),
                                "trials.json": json.dumps(trial_table(spec), indent=1)})
    init_ray(address, num_cpus=spec.resources.num_cpus or (os.cpu_count() or 1) + 1)
    quiet_ray_data()

    print(f"[sweep] stage 1/4: datasets -> {paths.datasets}", flush=True)
    make_datasets(spec, paths)
    print("[sweep] stage 2/4: base diffusers", flush=True)
    seeds = spec.seeds if spec.base_per_seed else [spec.seeds[0]]
    grid = run_stage(STAGE_BASE, train_base, {"maze": tune.grid_search(list(spec.mazes)),
                                              "seed": tune.grid_search(seeds)},
                     spec, storage, resume, ["step", "loss"])
    raise_if_any_failed(grid, "base diffuser")
    print(f"[sweep] stage 3/4: {len(trial_table(spec))} trials", flush=True)
    # One grid over explicit (maze, goal, seed) rows: mazes may have different goal lists.
    space = {"trial": tune.grid_search([{k: r[k] for k in ("maze", "goal", "seed")} for r in trial_table(spec)])}
    run_stage(STAGE_TRIALS, _unpack_trial, space, spec, storage, resume,
              ["step", "loss", "goal_recovered", "goal_distance", "accuracy", "erc"])
    print("[sweep] stage 4/4: report", flush=True)
    storage.pull("trials", refresh=True)  # remote storage: every node's trial results
    report = write_report(sweep_dir)
    for name in ("report.md", "report.html", "results.csv", "figures"):
        if (sweep_dir / name).exists():
            storage.push(name)
    where = storage.uri_of("report.md") if storage.is_remote else report
    print(f"[sweep] report: {where}", flush=True)
    return report


def _unpack_trial(config: dict, spec: Maze2DSpec, storage: SweepStorage) -> None:
    run_trial(config["trial"], spec, storage)


# -- dry run ---------------------------------------------------------------------------

def dry_run(spec: Maze2DSpec) -> str:
    trials = trial_table(spec)
    n_bases = len(spec.mazes) * (len(spec.seeds) if spec.base_per_seed else 1)
    n_datasets = sum(len(dataset_ids(spec, m)) for m in spec.mazes)
    r = spec.resources
    expert_steps = spec.expert.diffusion(spec.diffusion).train_steps
    per_run = (f"in the trial's own process, {r.cpus_per_worker} CPU" if r.trains_locally else
               f"{r.num_workers} worker(s) x {r.cpus_per_worker} CPU" + (f" + {r.gpus_per_worker} GPU" if r.use_gpu else ""))
    lines = [
        f"sweep {spec.name}: {len(spec.mazes)} mazes, {len(trials)} trials",
        f"stage 1 datasets: {n_datasets} Minari datasets "
        f"({spec.data.base_transitions:,} base / {spec.data.expert_transitions:,} expert transitions each)",
        f"stage 2 base diffusers: {n_bases} Ray Train runs of {spec.diffusion.train_steps:,} steps ({per_run})",
        f"stage 3 trials: {len(trials)}, each: expert diffuser ({spec.expert.describe(spec.diffusion)}), "
        f"triples by {spec.pregen.describe()}, reward ({spec.reward.train_steps:,} steps), held-out evaluation; "
        f"max concurrent: {r.max_concurrent_trials or 'unlimited'}; retries: {r.max_failures}",
        "stage 4 report: report.md, results.csv, figures/",
        "",
        f"{'trial':<24} {'maze':<8} {'goal':>4} {'seed':>4}",
    ]
    lines += [f"{t['trial_id']:<24} {t['maze']:<8} {t['goal']:>4} {t['seed']:>4}" for t in trials]
    diffuser_samples = (n_bases * spec.diffusion.train_steps + len(trials) * expert_steps) * spec.diffusion.batch_size
    reward_samples = len(trials) * spec.reward.train_steps * spec.reward.batch_size
    hours, rate_lines = spec.estimate.hours({"diffuser_samples_per_s": diffuser_samples,
                                             "reward_samples_per_s": reward_samples})
    device = "GPU" if r.use_gpu else "CPU-worker"
    lines += ["", f"{len(trials)} trials",
              f"estimated training time: {hours * r.num_workers:,.1f} {device}-hours "
              f"({r.num_workers} worker(s) per run; pre-generation and evaluation not included):"] + rate_lines
    return "\n".join(lines)
