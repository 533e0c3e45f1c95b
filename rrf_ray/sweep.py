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
from rrf_ray.storage import SweepStorage

STAGE_BASE, STAGE_TRIALS = "stage2-base-diffusers", "stage3-trials"


@dataclass(frozen=True)
class SweepPaths:
    """A sweep's files: local paths (the storage directory, or this node's mirror of a URI)."""

    storage: SweepStorage

    @property
    def root(self) -> Path:
        return self.storage.local

    @property
    def datasets(self) -> Path:
        return self.root / "datasets"

    @property
    def artifacts(self) -> ArtifactStore:
        return ArtifactStore(self.storage)

    @property
    def train(self) -> str:
        """Ray Train's storage path (a URI for remote storage)."""
        return self.storage.uri_of("train")

    def trial_dir(self, trial_id: str) -> Path:
        return self.root / "trials" / trial_id

    def push_trial(self, trial_id: str) -> None:
        self.storage.push(f"trials/{trial_id}")


def goals_of(spec: SweepSpec, maze: str) -> list[int]:
    return spec.goals or list(range(1, len(spec.mazes[maze].goals) + 1))


def trial_id(maze: str, goal: int, seed: int) -> str:
    return f"{maze}-goal{goal}-seed{seed}"


def trial_table(spec: SweepSpec) -> list[dict]:
    return [{"trial_id": trial_id(m, g, s), "maze": m, "goal": g, "seed": s}
            for m in spec.mazes for g in goals_of(spec, m) for s in spec.seeds]


# -- keys: exactly the spec parts that determine each artifact --------------------------

def dataset_part(spec: SweepSpec, maze: str) -> dict:
    return {"maze": spec.mazes[maze].model_dump(mode="json"), "data": spec.data.fingerprint(),
            "data_seed": spec.data_seed}


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


def _dataset_marker(did: str) -> str:
    """Remote storage: this file exists once dataset `did` has been pushed in full."""
    return f"datasets-complete/{did.replace('/', '__')}"


def make_datasets(spec: SweepSpec, paths: SweepPaths, progress: bool = True) -> None:
    from rrf_ray.data.datasets import dataset_id, generate_maze2d

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


def windows(spec: SweepSpec, paths: SweepPaths, maze: str, goal: int | None, split: str, normalizer=None,
            for_evaluation: bool = False):
    from rrf_ray.data.datasets import dataset_id
    from rrf_ray.data.windows import load_windows

    w = spec.evaluation_windows if for_evaluation else spec.windows
    paths.storage.pull(f"datasets/{dataset_id(maze, goal)}")  # remote storage: this node's copy
    return load_windows(dataset_id(maze, goal), w.horizon, w.stride, split=split,
                        root=paths.datasets, normalizer=normalizer or "minmax", pad_end=w.pad_end)


# -- stage 2 and 3 trainables (run as Tune trials) --------------------------------------

def tune_report_callbacks():
    from ray.tune.integration.ray_train import TuneReportCallback

    return [TuneReportCallback()]


def publish_checkpoint(store: ArtifactStore, kind: str, key: str, result) -> Path:
    with result.checkpoint.as_directory() as d:
        return store.publish(kind, key, d)


def train_base(config: dict, spec: SweepSpec, storage: SweepStorage) -> None:
    """Tune trial: the base diffuser of one maze (and seed, if per-seed)."""
    from ray import tune

    from rrf_ray.diffusion.train import train_diffuser

    paths, maze, seed = SweepPaths(storage), config["maze"], config["seed"]
    key = base_key(spec, maze, seed)
    if not paths.artifacts.is_done("diffusers", key):
        data = windows(spec, paths, maze, None, "train")
        result = train_diffuser(data, spec.diffusion, spec.resources, paths.train, f"base-{maze}-{key}",
                                seed=seed, callbacks=tune_report_callbacks())
        publish_checkpoint(paths.artifacts, "diffusers", key, result)
    tune.report({"done": 1, "artifact": key})


def run_trial(config: dict, spec: SweepSpec, storage: SweepStorage) -> None:
    """Tune trial: expert diffuser -> triples -> reward -> held-out evaluation, for one (maze, goal, seed)."""
    from ray import tune

    from rrf_ray.ray_utils import quiet_ray_data

    quiet_ray_data()
    paths = SweepPaths(storage)
    maze, goal, seed = config["maze"], config["goal"], config["seed"]
    tid = trial_id(maze, goal, seed)
    out = paths.trial_dir(tid)
    key = result_key(spec, maze, goal, seed)
    previous = read_trial_result(storage, tid)
    if previous and previous.get("status") == "ok" and previous.get("key") == key:
        tune.report(previous["metrics"])  # finished in an earlier run: nothing to recompute
        return
    record = {"trial_id": tid, "maze": maze, "goal": goal, "seed": seed, "key": key}
    metrics = record_trial(paths, tid, record, lambda: _trial_work(spec, paths, maze, goal, seed, out))
    tune.report(metrics)


def record_trial(paths: SweepPaths, tid: str, record: dict, work) -> dict:
    """metrics = work(), written (or its failure, with traceback) to the trial's result.json and pushed."""
    out = paths.trial_dir(tid)
    try:
        metrics = work()
    except Exception as e:
        write_atomic(out / "result.json", json.dumps({**record, "status": "failed", "metrics": None,
                                                      "error": f"{type(e).__name__}: {e}",
                                                      "traceback": traceback.format_exc()}, indent=1))
        paths.push_trial(tid)
        raise
    write_atomic(out / "result.json", json.dumps({**record, "status": "ok", "error": None, "metrics": metrics},
                                                 indent=1))
    paths.push_trial(tid)
    return metrics


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
                                callbacks=tune_report_callbacks())
        publish_checkpoint(store, "diffusers", ekey, result)

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
            noised = _noising_windows(spec, paths, maze, goal, normalizer, rng, base_train)
        gpus = spec.resources.pregen_gpus_per_task if spec.resources.use_gpu else 0.0
        pregenerate(base_dir, store.path("diffusers", ekey), shard_dir, spec.pregen, seed=seed,
                    starts=starts[:, 0, action_dim:], dataset_windows=noised, gpus_per_task=gpus,
                    overwrite=True, progress=False, on_this_node=paths.storage.is_remote,
                    in_process=spec.resources.trains_locally)
        store.mark_done("shards", skey)  # remote storage: pushed there first

    rkey = reward_key(spec, maze, goal, seed)
    if not store.is_done("rewards", rkey):
        timer.start("reward")
        storage = paths.storage
        remote = (storage.fs, storage.remote_path(f"artifacts/shards/{skey}")) if storage.is_remote else None
        result = train_reward(shard_dir, spec.reward, spec.resources, paths.train, f"reward-{maze}-g{goal}-{rkey}",
                              seed=seed, normalizer=normalizer.to_dict(), callbacks=tune_report_callbacks(),
                              remote=remote)
        publish_checkpoint(store, "rewards", rkey, result)

    timer.start("eval")
    reward = load_reward(store.path("rewards", rkey))
    held_base = windows(spec, paths, maze, None, "heldout", normalizer, for_evaluation=True)
    held_expert = windows(spec, paths, maze, goal, "heldout", normalizer, for_evaluation=True)
    metrics = evaluate_reward(lambda x: reward.score(x, t=spec.evaluation.t), spec.maze(maze), goal, held_base,
                              held_expert, out, max_windows=spec.evaluation.max_windows, seed=seed)
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


def _noising_windows(spec, paths, maze, goal, normalizer, rng, base_train) -> np.ndarray:
    """Algorithm 1's x0 windows; `base_train` is the base's training windows, already loaded."""
    sources = {"base": [None], "expert": [goal], "mixed": [None, goal]}[spec.pregen.noising_source]
    parts = []
    for g in sources:
        w = base_train if g is None else windows(spec, paths, maze, g, "train", normalizer)
        parts.append(w.batch(rng.integers(len(w), size=min(len(w), spec.pregen.noised_windows))))
    return np.concatenate(parts)


def read_trial_result(storage: SweepStorage, tid: str) -> dict | None:
    try:
        return json.loads(storage.read_text(f"trials/{tid}/result.json") or "null")
    except json.JSONDecodeError:
        return None


# -- running stages on Tune ------------------------------------------------------------

def run_stage(name: str, trainable, param_space: dict, spec: SweepSpec, storage: SweepStorage, resume: bool,
              metric_columns: list[str], trial_resources: dict | None = None):
    """A Tune grid `name` of `trainable(config, spec=, storage=)`; restored when resuming.

    trial_resources: what each trial's own process holds (default resources.trial_process_cpus
    CPUs: its Train runs ask for theirs, or train in it in local mode); trials that compute in
    their own process ask for more.
    """
    from ray import tune

    fn = tune.with_resources(tune.with_parameters(trainable, spec=spec, storage=storage),
                             trial_resources or {"cpu": spec.resources.trial_process_cpus})
    fs = storage.fs  # None for a directory: Tune uses the local file system
    root = storage.remote if storage.is_remote else str(storage.local)
    path = f"{root}/{name}"
    if resume and tune.Tuner.can_restore(path, storage_filesystem=fs):
        tuner = tune.Tuner.restore(path, trainable=fn, resume_errored=True, param_space=param_space,
                                   storage_filesystem=fs)
    else:
        tuner = tune.Tuner(
            fn, param_space=param_space,
            tune_config=tune.TuneConfig(max_concurrent_trials=spec.resources.max_concurrent_trials),
            run_config=tune.RunConfig(
                name=name, storage_path=root, storage_filesystem=fs,
                failure_config=tune.FailureConfig(max_failures=spec.resources.max_failures),
                progress_reporter=tune.CLIReporter(metric_columns=metric_columns, max_report_frequency=30),
            ),
        )
    return tuner.fit()


def run_sweep(spec: SweepSpec, storage: SweepStorage, resume: bool = False, address: str | None = None) -> Path:
    """All four stages; returns the report path (in the local directory or mirror)."""
    from ray import tune

    from rrf_ray.ray_utils import init_ray, quiet_ray_data
    from rrf_ray.report import write_report

    paths = SweepPaths(storage)
    sweep_dir = storage.local
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for name, text in (("spec.json", spec.model_dump_json(indent=1)),
                       ("trials.json", json.dumps(trial_table(spec), indent=1))):
        write_atomic(sweep_dir / name, text)
        storage.push(name)
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
    for name in ("report.md", "results.csv", "figures"):
        if (sweep_dir / name).exists():
            storage.push(name)
    where = storage.uri_of("report.md") if storage.is_remote else report
    print(f"[sweep] report: {where}", flush=True)
    return report


def _unpack_trial(config: dict, spec: SweepSpec, storage: SweepStorage) -> None:
    run_trial(config["trial"], spec, storage)


def raise_if_any_failed(grid, what: str) -> None:
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        raise RuntimeError(f"{len(errors)} {what} run(s) failed; first error: {errors[0]}")


# -- dry run ---------------------------------------------------------------------------

def dry_run(spec: SweepSpec) -> str:
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
    hours = (diffuser_samples / spec.estimate.diffuser_samples_per_s
             + reward_samples / spec.estimate.reward_samples_per_s) / 3600
    device = "GPU" if r.use_gpu else "CPU-worker"
    lines += ["", f"{len(trials)} trials",
              f"estimated training time: {hours * r.num_workers:,.1f} {device}-hours at "
              f"{spec.estimate.diffuser_samples_per_s:,.0f} diffuser and {spec.estimate.reward_samples_per_s:,.0f} "
              "reward samples/s per run (set estimate.* from benchmarks/diffuser_train.py on your hardware)"]
    return "\n".join(lines)


# -- CLI -------------------------------------------------------------------------------

def experiment_runner(experiment: str):
    """(run, dry_run) of an experiment: run(spec, storage, resume, address) -> report path;
    dry_run(spec) -> the text --dry-run prints. Imports are deferred (see config.spec_model)."""
    if experiment == "maze2d":
        return run_sweep, dry_run
    if experiment == "locomotion":
        from rrf_ray.locomotion.sweep import dry_run as locomotion_dry_run
        from rrf_ray.locomotion.sweep import run_locomotion_sweep

        return run_locomotion_sweep, locomotion_dry_run
    if experiment == "image":
        from rrf_ray.image.sweep import dry_run as image_dry_run
        from rrf_ray.image.sweep import run_image_sweep

        return run_image_sweep, image_dry_run
    raise ConfigError(f"experiment {experiment!r} has no sweep runner")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rrf_ray.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", help="a name in sweeps/ (e.g. maze2d, maze2d-smoke, maze2d-tiny) or a YAML path")
    p.add_argument("--storage", default="results",
                   help="where sweeps live, one per name: a directory (default ./results; shared by every node "
                        "on a cluster) or a URI pyarrow opens (s3://bucket/path, gs://...)")
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
    run, describe = experiment_runner(spec.experiment)
    if args.dry_run:
        print(describe(spec))
        return 0
    try:
        storage = SweepStorage(args.storage, spec.name)
        used = storage.holds_anything()
    except (ValueError, OSError) as e:
        exit_on_user_error(ConfigError(f"--storage {args.storage}: {e}"))
    if used:
        if not args.resume:
            exit_on_user_error(ConfigError(f"{storage.uri} already holds a sweep: pass --resume to continue it, "
                                           "or choose another --storage"))
        stored = storage.read_text("spec.json")
        if stored is not None and json.loads(stored) != json.loads(spec.model_dump_json()):
            exit_on_user_error(ConfigError(f"the spec differs from the one {storage.uri} was started with "
                                           "(its spec.json); resume with the same spec and --set overrides"))
    from rrf_ray.data.datasets import DatasetError

    try:
        run(spec, storage, resume=args.resume, address=args.address)
    except (DatasetError, ConfigError) as e:  # a missing or unfit dataset or input file: a user error, exit 2
        exit_on_user_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
