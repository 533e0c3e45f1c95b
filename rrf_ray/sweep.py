"""`python -m rrf_ray.sweep NAME|PATH`: the Maze2D relative-reward sweep on Ray.

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

import argparse
import json
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rrf_ray.artifacts import ArtifactStore, artifact_key
from rrf_ray.atomic import write_atomic
from rrf_ray.config import ConfigError, SweepSpec, exit_on_user_error, load_spec

STAGE_BASE, STAGE_TRIALS = "stage2-base-diffusers", "stage3-trials"


@dataclass(frozen=True)
class SweepPaths:
    root: Path

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.root / "artifacts")

    @property
    def train(self) -> Path:
        return self.root / "train"

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / "trials" / trial_id


def goals_of(spec: SweepSpec, maze: str) -> list[int]:
    return spec.goals or list(range(1, len(spec.mazes[maze].goals) + 1))


def trial_id(maze: str, goal: int, seed: int) -> str:
    return f"{maze}-goal{goal}-seed{seed}"


def trial_table(spec: SweepSpec) -> list[dict]:
    return [{"trial_id": trial_id(m, g, s), "maze": m, "goal": g, "seed": s}
            for m in spec.mazes for g in goals_of(spec, m) for s in spec.seeds]


# -- keys: exactly the spec parts that determine each artifact --------------------------

def dataset_part(spec: SweepSpec, maze: str) -> dict:
    return {"maze": spec.mazes[maze].model_dump(mode="json"), "data": spec.data.model_dump(mode="json",
            exclude={"workers"}), "data_seed": spec.data_seed}


def base_key(spec: SweepSpec, maze: str, seed: int) -> str:
    return artifact_key("base", dataset_part(spec, maze), spec.windows, spec.diffusion,
                        seed if spec.base_per_seed else None)


def expert_key(spec: SweepSpec, maze: str, goal: int, seed: int) -> str:
    return artifact_key("expert", base_key(spec, maze, seed), spec.expert, goal, seed)


def shards_key(spec: SweepSpec, maze: str, goal: int, seed: int) -> str:
    return artifact_key("shards", expert_key(spec, maze, goal, seed), spec.pregen)


def reward_key(spec: SweepSpec, maze: str, goal: int, seed: int) -> str:
    return artifact_key("reward", shards_key(spec, maze, goal, seed), spec.reward)


def result_key(spec: SweepSpec, maze: str, goal: int, seed: int) -> str:
    """A trial's result.json: its reward, scored the way `evaluation` says."""
    return artifact_key("result", reward_key(spec, maze, goal, seed), spec.evaluation)


# -- stage 1: datasets ------------------------------------------------------------------

def dataset_ids(spec: SweepSpec, maze: str) -> list[tuple[int | None, int]]:
    """(goal or None for base, transitions) of every dataset a maze needs."""
    return [(None, spec.data.base_transitions)] + [(g, spec.data.expert_transitions) for g in goals_of(spec, maze)]


def make_datasets(spec: SweepSpec, paths: SweepPaths, progress: bool = True) -> None:
    from rrf_ray.data.datasets import generate_maze2d

    for maze in spec.mazes:
        for goal, n in dataset_ids(spec, maze):
            generate_maze2d(spec.maze(maze), goal, n, spec.data_seed, spec.data, root=paths.datasets,
                            workers=spec.data.workers, progress=progress)


def windows(spec: SweepSpec, paths: SweepPaths, maze: str, goal: int | None, split: str, normalizer=None,
            for_evaluation: bool = False):
    from rrf_ray.data.datasets import dataset_id
    from rrf_ray.data.windows import load_windows

    w = spec.evaluation_windows if for_evaluation else spec.windows
    return load_windows(dataset_id(maze, goal), w.horizon, w.stride, split=split,
                        root=paths.datasets, normalizer=normalizer or "minmax", pad_end=w.pad_end)


# -- stage 2 and 3 trainables (run as Tune trials) --------------------------------------

def _train_callbacks():
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def _publish_checkpoint(store: ArtifactStore, kind: str, key: str, result) -> Path:
    with result.checkpoint.as_directory() as d:
        return store.publish(kind, key, d)


def train_base(config: dict, spec: SweepSpec, root: str) -> None:
    """Tune trial: the base diffuser of one maze (and seed, if per-seed)."""
    from ray import tune

    from rrf_ray.diffusion.train import train_diffuser

    paths, maze, seed = SweepPaths(Path(root)), config["maze"], config["seed"]
    key = base_key(spec, maze, seed)
    if not paths.artifacts.is_done("diffusers", key):
        data = windows(spec, paths, maze, None, "train")
        result = train_diffuser(data, spec.diffusion, spec.resources, paths.train, f"base-{maze}-{key}",
                                seed=seed, callbacks=_train_callbacks())
        _publish_checkpoint(paths.artifacts, "diffusers", key, result)
    tune.report({"done": 1, "artifact": key})


def run_trial(config: dict, spec: SweepSpec, root: str) -> None:
    """Tune trial: expert diffuser -> triples -> reward -> held-out evaluation, for one (maze, goal, seed)."""
    from ray import tune

    from rrf_ray.ray_utils import quiet_ray_data

    quiet_ray_data()
    paths = SweepPaths(Path(root))
    maze, goal, seed = config["maze"], config["goal"], config["seed"]
    tid = trial_id(maze, goal, seed)
    out = paths.trial_dir(tid)
    key = result_key(spec, maze, goal, seed)
    previous = _read_result(out)
    if previous and previous.get("status") == "ok" and previous.get("key") == key:
        tune.report(previous["metrics"])  # finished in an earlier run: nothing to recompute
        return
    record = {"trial_id": tid, "maze": maze, "goal": goal, "seed": seed, "key": key}
    try:
        metrics = _trial_work(spec, paths, maze, goal, seed, out)
    except Exception as e:
        write_atomic(out / "result.json", json.dumps({**record, "status": "failed", "metrics": None,
                                                      "error": f"{type(e).__name__}: {e}",
                                                      "traceback": traceback.format_exc()}, indent=1))
        raise
    write_atomic(out / "result.json", json.dumps({**record, "status": "ok", "error": None, "metrics": metrics},
                                                 indent=1))
    tune.report(metrics)


def _trial_work(spec: SweepSpec, paths: SweepPaths, maze: str, goal: int, seed: int, out: Path) -> dict:
    from rrf_ray.diffusion.checkpoint import load_diffuser
    from rrf_ray.diffusion.train import train_diffuser
    from rrf_ray.eval.trial import evaluate_reward
    from rrf_ray.rrf.align import train_reward
    from rrf_ray.rrf.pregenerate import pregenerate
    from rrf_ray.rrf.reward_nets import load_reward

    store = paths.artifacts
    timer = PhaseTimer()
    base_dir = store.path("diffusers", base_key(spec, maze, seed))
    if not store.is_done("diffusers", base_key(spec, maze, seed)):
        raise RuntimeError(f"base diffuser of {maze} is missing at {base_dir}: stage 2 did not finish")
    normalizer = load_diffuser(base_dir).normalizer  # both models and the reward share one space

    ekey = expert_key(spec, maze, goal, seed)
    if not store.is_done("diffusers", ekey):
        timer.start("expert")
        data = windows(spec, paths, maze, goal, "train", normalizer)
        init = base_dir if spec.expert.init == "base" else None
        result = train_diffuser(data, spec.expert.diffusion(spec.diffusion), spec.resources, paths.train,
                                f"expert-{maze}-g{goal}-{ekey}", seed=seed, init_from=init,
                                callbacks=_train_callbacks())
        _publish_checkpoint(store, "diffusers", ekey, result)

    skey = shards_key(spec, maze, goal, seed)
    shard_dir = store.path("shards", skey)
    if not store.is_done("shards", skey):
        timer.start("pregen")
        base_train = windows(spec, paths, maze, None, "train", normalizer)
        rng = np.random.default_rng(seed)
        starts = base_train.batch(rng.integers(len(base_train), size=min(4096, len(base_train))))
        action_dim = base_train.action_dim
        noised = None
        if spec.pregen.algorithm == "dataset_noising":
            noised = _noising_windows(spec, paths, maze, goal, normalizer, rng)
        gpus = spec.resources.pregen_gpus_per_task if spec.resources.use_gpu else 0.0
        pregenerate(base_dir, store.path("diffusers", ekey), shard_dir, spec.pregen, seed=seed,
                    starts=starts[:, 0, action_dim:], dataset_windows=noised, gpus_per_task=gpus,
                    overwrite=True, progress=False)
        store.mark_done("shards", skey)

    rkey = reward_key(spec, maze, goal, seed)
    if not store.is_done("rewards", rkey):
        timer.start("reward")
        result = train_reward(shard_dir, spec.reward, spec.resources, paths.train, f"reward-{maze}-g{goal}-{rkey}",
                              seed=seed, normalizer=normalizer.to_dict(), callbacks=_train_callbacks())
        _publish_checkpoint(store, "rewards", rkey, result)

    timer.start("eval")
    reward = load_reward(store.path("rewards", rkey))
    held_base = windows(spec, paths, maze, None, "heldout", normalizer, for_evaluation=True)
    held_expert = windows(spec, paths, maze, goal, "heldout", normalizer, for_evaluation=True)
    metrics = evaluate_reward(lambda x: reward.score(x, t=0), spec.maze(maze), goal, held_base, held_expert,
                              out, max_windows=spec.evaluation.max_windows, seed=seed)
    return {**metrics.as_dict(), **timer.stop()}


class PhaseTimer:
    """Wall-clock seconds of a trial's phases (reported as `<phase>_s`), to see where time goes."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._phase, self._t0 = None, 0.0

    def start(self, phase: str) -> None:
        self.stop()
        self._phase, self._t0 = phase, time.perf_counter()

    def stop(self) -> dict[str, float]:
        if self._phase is not None:
            self.seconds[f"{self._phase}_s"] = round(time.perf_counter() - self._t0, 2)
            self._phase = None
        return dict(self.seconds)


def _noising_windows(spec, paths, maze, goal, normalizer, rng) -> np.ndarray:
    sources = {"base": [None], "expert": [goal], "mixed": [None, goal]}[spec.pregen.noising_source]
    parts = []
    for g in sources:
        w = windows(spec, paths, maze, g, "train", normalizer)
        parts.append(w.batch(rng.integers(len(w), size=min(len(w), spec.pregen.noised_windows))))
    return np.concatenate(parts)


def _read_result(out: Path) -> dict | None:
    try:
        return json.loads((out / "result.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


# -- running stages on Tune ------------------------------------------------------------

def run_stage(name: str, trainable, param_space: dict, spec: SweepSpec, root: Path, resume: bool,
              metric_columns: list[str]):
    from ray import tune

    fn = tune.with_resources(tune.with_parameters(trainable, spec=spec, root=str(root)),
                             {"cpu": spec.resources.trial_cpus})
    path = root / name
    if resume and tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), trainable=fn, resume_errored=True, param_space=param_space)
    else:
        tuner = tune.Tuner(
            fn, param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.max_concurrent_trials),
            run_config=tune.RunConfig(
                name=name, storage_path=str(root),
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                progress_reporter=tune.CLIReporter(metric_columns=metric_columns, max_report_frequency=30),
            ),
        )
    return tuner.fit()


def run_sweep(spec: SweepSpec, sweep_dir: Path, resume: bool = False, address: str | None = None) -> Path:
    """All four stages; returns the report path."""
    from ray import tune

    from rrf_ray.ray_utils import init_ray, quiet_ray_data
    from rrf_ray.report import write_report

    paths = SweepPaths(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(sweep_dir / "spec.json", spec.model_dump_json(indent=1))
    write_atomic(sweep_dir / "trials.json", json.dumps(trial_table(spec), indent=1))
    init_ray(address, num_cpus=spec.resources.num_cpus or (os.cpu_count() or 1) + 1)
    quiet_ray_data()

    print(f"[sweep] stage 1/4: datasets -> {paths.datasets}", flush=True)
    make_datasets(spec, paths)
    print("[sweep] stage 2/4: base diffusers", flush=True)
    seeds = spec.seeds if spec.base_per_seed else [spec.seeds[0]]
    grid = run_stage(STAGE_BASE, train_base, {"maze": tune.grid_search(list(spec.mazes)),
                                              "seed": tune.grid_search(seeds)},
                     spec, sweep_dir, resume, ["step", "loss"])
    _raise_if_all_failed(grid, "base diffuser")
    print(f"[sweep] stage 3/4: {len(trial_table(spec))} trials", flush=True)
    # One grid over explicit (maze, goal, seed) rows: mazes may have different goal lists.
    space = {"trial": tune.grid_search([{k: r[k] for k in ("maze", "goal", "seed")} for r in trial_table(spec)])}
    run_stage(STAGE_TRIALS, _unpack_trial, space, spec, sweep_dir, resume,
              ["step", "loss", "goal_recovered", "goal_distance", "accuracy", "erc"])
    print("[sweep] stage 4/4: report", flush=True)
    report = write_report(sweep_dir)
    print(f"[sweep] report: {report}", flush=True)
    return report


def _unpack_trial(config: dict, spec: SweepSpec, root: str) -> None:
    run_trial(config["trial"], spec, root)


def _raise_if_all_failed(grid, what: str) -> None:
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} {what} run(s) failed; first error: {errors[0]}")


# -- dry run ---------------------------------------------------------------------------

def dry_run(spec: SweepSpec) -> str:
    trials = trial_table(spec)
    n_bases = len(spec.mazes) * (len(spec.seeds) if spec.base_per_seed else 1)
    n_datasets = sum(len(dataset_ids(spec, m)) for m in spec.mazes)
    r = spec.resources
    per_run = f"{r.num_workers} worker(s) x {r.cpus_per_worker} CPU" + (f" + {r.gpus_per_worker} GPU" if r.use_gpu else "")
    lines = [
        f"sweep {spec.name}: {len(spec.mazes)} mazes, {len(trials)} trials",
        f"stage 1 datasets: {n_datasets} Minari datasets "
        f"({spec.data.base_transitions:,} base / {spec.data.expert_transitions:,} expert transitions each)",
        f"stage 2 base diffusers: {n_bases} Ray Train runs of {spec.diffusion.train_steps:,} steps ({per_run})",
        f"stage 3 trials: {len(trials)}, each: expert diffuser ({spec.diffusion.train_steps:,} steps), "
        f"{spec.pregen.algorithm} triples, reward ({spec.reward.train_steps:,} steps), held-out evaluation; "
        f"max concurrent: {r.max_concurrent_trials or 'unlimited'}; retries: {r.max_failures}",
        "stage 4 report: report.md, results.csv, figures/",
        "",
        f"{'trial':<24} {'maze':<8} {'goal':>4} {'seed':>4}",
    ]
    lines += [f"{t['trial_id']:<24} {t['maze']:<8} {t['goal']:>4} {t['seed']:>4}" for t in trials]
    diffuser_samples = (n_bases + len(trials)) * spec.diffusion.train_steps * spec.diffusion.batch_size
    reward_samples = len(trials) * spec.reward.train_steps * spec.reward.batch_size
    hours = (diffuser_samples / spec.estimate.diffuser_samples_per_s
             + reward_samples / spec.estimate.reward_samples_per_s) / 3600
    device = "GPU" if r.use_gpu else "CPU-worker"
    lines += ["", f"{len(trials)} trials",
              f"estimated training time: {hours * r.num_workers:,.1f} {device}-hours at "
              f"{spec.estimate.diffuser_samples_per_s:,.0f} diffuser and {spec.estimate.reward_samples_per_s:,.0f} "
              "reward samples/s per run (set estimate.* from benchmarks/diffuser_train.py on your hardware)"]
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rrf_ray.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="a name in sweeps/ (maze2d, maze2d-smoke, maze2d-tiny) or a YAML path")
    p.add_argument("--storage", default="results", help="where sweeps live (default ./results); one dir per sweep")
    p.add_argument("--resume", action="store_true", help="continue a sweep in its storage directory")
    p.add_argument("--dry-run", action="store_true", help="print stages, trials and resource needs; run nothing")
    p.add_argument("--address", default=None, help="Ray address (default: a running cluster, else a local Ray)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.sweep, args.overrides)
    except ConfigError as e:
        exit_on_user_error(e)
    if args.dry_run:
        print(dry_run(spec))
        return 0
    if "://" in args.storage:
        exit_on_user_error(ConfigError("remote --storage is not supported yet by the sweep driver: "
                                       "use a shared file system path (NFS) on multi-node clusters"))
    sweep_dir = Path(args.storage).expanduser().resolve() / spec.name
    stored = sweep_dir / "spec.json"
    if sweep_dir.exists() and any(sweep_dir.iterdir()):
        if not args.resume:
            exit_on_user_error(ConfigError(f"{sweep_dir} already holds a sweep: pass --resume to continue it, "
                                           "or choose another --storage"))
        if stored.exists() and json.loads(stored.read_text()) != json.loads(spec.model_dump_json()):
            exit_on_user_error(ConfigError(f"the spec differs from the one {sweep_dir} was started with "
                                           f"({stored}); resume with the same spec and --set overrides"))
    run_sweep(spec, sweep_dir, resume=args.resume, address=args.address)
    return 0


if __name__ == "__main__":
    sys.exit(main())
