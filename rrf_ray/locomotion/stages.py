"""`python -m rrf_ray.sweep locomotion`: steering a base diffuser with the relative reward (SPEC section 5).

Stages, each idempotent (content-addressed artifacts under the sweep directory, as in Maze2D):
  1. datasets: every environment's base and expert Minari dataset is checked before any
     work (a missing one fails, naming the ids and how to provide them) and fingerprinted;
  2. models: a Tune grid over environment x {base, expert, discriminator} of Ray Train runs;
  3. rewards: per environment, training triples (Algorithm 1 on mixed windows by default,
     or Algorithm 2) as Parquet shards, then the value-U-Net reward through Ray Data;
  4. rollouts: a Tune grid over environment x method x omega x t_stopgrad x seed (or an
     Optuna search per environment and method); each trial runs vectorised receding-horizon
     rollouts and reports the D4RL-normalised score;
  5. the report (Table 1 and score against omega).
`--resume` restores each stage's Tuner and reuses finished artifacts and trial results.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from rrf_ray.engine.artifacts import artifact_key
from rrf_ray.engine.stages import (Search, SweepPaths, copy_checkpoint, raise_if_any_failed, recorded_trial,
                                   run_stage, tune_report_callbacks, write_sweep_files)
from rrf_ray.engine.storage import SweepStorage
from rrf_ray.locomotion.spec import LocomotionSweepSpec
from rrf_ray.rrf.extract import extraction_keys

STAGE_MODELS, STAGE_REWARDS, STAGE_ROLLOUTS = "stage2-models", "stage3-rewards", "stage4-rollouts"
DATASETS_FILE = "datasets.json"
DATA_SCORES_FILE = "data_scores.json"  # the base and expert data's own scores, for Table 1
ROLLOUT_METRICS = ["score", "score_se", "return_mean", "length_mean"]


# -- the trial table --------------------------------------------------------------------

def trial_id(env: str, method: str, omega: float | None, t_stopgrad: int | None, seed: int | None) -> str:
    parts = [env, method]
    if method != "unsteered":
        parts += [f"w{omega:g}", f"ts{t_stopgrad}"]
    parts.append("seeds" if seed is None else f"seed{seed}")
    return "-".join(parts)


def trial_table(spec: LocomotionSweepSpec) -> list[dict]:
    """The grid's rollout trials; with Optuna, only the unsteered ones are known in advance."""
    s = spec.search
    rows = []
    for env in spec.environments:
        for method in s.methods:
            if method == "unsteered":
                settings = [(0.0, 0)]
            elif s.search == "grid":
                settings = [(w, t) for w in s.omegas for t in s.t_stopgrads]
            else:
                continue
            for omega, t in settings:
                for seed in s.seeds:
                    rows.append({"trial_id": trial_id(env, method, omega, t, seed), "env": env, "method": method,
                                 "omega": float(omega), "t_stopgrad": int(t), "seeds": [seed]})
    return rows


# -- keys: exactly the spec parts that determine each artifact --------------------------

def read_fingerprints(storage: SweepStorage) -> dict:
    text = storage.read_text(DATASETS_FILE)
    if text is None:
        raise RuntimeError(f"{DATASETS_FILE} is missing in {storage.uri}: stage 1 did not finish")
    return json.loads(text)


def data_part(spec: LocomotionSweepSpec, env: str, fingerprints: dict) -> dict:
    e = spec.environments[env]
    return {"env": e.env_id, "base": fingerprints[env]["base"], "expert": fingerprints[env]["expert"],
            "windows": spec.windows_of(env).model_dump(mode="json")}


def model_key(spec: LocomotionSweepSpec, env: str, model: str, fingerprints: dict) -> str:
    if model == "discriminator":
        return artifact_key("loco-discriminator", data_part(spec, env, fingerprints), spec.reward_of(env),
                            spec.discriminator, spec.diffusion.n_timesteps, spec.seed)
    return artifact_key(f"loco-{model}", data_part(spec, env, fingerprints), spec.diffusion_of(env), spec.seed)


def model_kind(model: str) -> str:
    return "discriminators" if model == "discriminator" else "diffusers"


def reward_key(spec: LocomotionSweepSpec, env: str, fingerprints: dict) -> str:
    return extraction_keys(model_key(spec, env, "base", fingerprints), model_key(spec, env, "expert", fingerprints),
                           spec.pregen, spec.reward_of(env), spec.seed)[1]


def guide_key(spec: LocomotionSweepSpec, env: str, method: str, fingerprints: dict) -> str | None:
    if method == "rrf":
        return reward_key(spec, env, fingerprints)
    if method == "discriminator":
        return model_key(spec, env, "discriminator", fingerprints)
    return None


def rollout_key(spec: LocomotionSweepSpec, row: dict, fingerprints: dict) -> str:
    env = row["env"]
    return artifact_key("loco-rollout", model_key(spec, env, "base", fingerprints),
                        guide_key(spec, env, row["method"], fingerprints), row["omega"], row["t_stopgrad"],
                        row["seeds"], spec.search.n_guide_steps, spec.search.scale_grad_by_std,
                        None if spec.search.guidance_form == "janner" else spec.search.guidance_form,
                        spec.rollout.model_dump(mode="json", exclude={"threads", "gpus"}),
                        spec.environments[env].reference_scores)


# -- stage 1: datasets ------------------------------------------------------------------

def check_and_fingerprint(spec: LocomotionSweepSpec) -> dict:
    from rrf_ray.locomotion.datasets import ROLES, check_datasets, dataset_fingerprint, dataset_of, root_of

    check_datasets(spec)
    root = root_of(spec)
    return {env: {role: dataset_fingerprint(dataset_of(spec, env, role), root) for role in ROLES}
            for env in spec.environments}


# -- stage 2: models ----------------------------------------------------------------------

def train_model(config: dict, spec: LocomotionSweepSpec, storage: SweepStorage) -> None:
    """Tune trial: one environment's base diffuser, expert diffuser or discriminator."""
    from ray import tune

    from rrf_ray.locomotion.datasets import env_windows, fit_normalizer

    paths = SweepPaths(storage)
    env, model = config["job"]["env"], config["job"]["model"]
    fingerprints = read_fingerprints(storage)
    key = model_key(spec, env, model, fingerprints)

    def train(directory: Path) -> None:
        normalizer = fit_normalizer(spec, env)  # base and expert together: both models share it
        if model == "discriminator":
            from rrf_ray.locomotion.discriminator import train_discriminator

            base = env_windows(spec, env, "base", "train", normalizer)
            expert = env_windows(spec, env, "expert", "train", normalizer)
            rng = np.random.default_rng(spec.seed)
            held = [env_windows(spec, env, role, "heldout", normalizer) for role in ("base", "expert")]
            val = [w.batch(rng.integers(len(w), size=min(len(w), 2048))) for w in held]
            result = train_discriminator(base, expert, val[0], val[1], spec.discriminator, spec.reward_of(env),
                                         spec.diffusion, spec.resources, paths.train, f"discriminator-{env}-{key}",
                                         seed=spec.seed, callbacks=tune_report_callbacks())
        else:
            from rrf_ray.diffusion.train import train_diffuser

            data = env_windows(spec, env, model, "train", normalizer)
            result = train_diffuser(data, spec.diffusion_of(env), spec.resources, paths.train, f"{model}-{env}-{key}",
                                    seed=spec.seed, callbacks=tune_report_callbacks())
        copy_checkpoint(result, directory)

    paths.artifacts.ensure(model_kind(model), key, train)
    tune.report({"done": 1, "artifact": key})


# -- stage 3: rewards -------------------------------------------------------------------

def train_env_reward(config: dict, spec: LocomotionSweepSpec, storage: SweepStorage) -> None:
    """Tune trial: one environment's relative reward (the one extraction path: triples -> Parquet -> reward)."""
    from ray import tune

    from rrf_ray.diffusion.checkpoint import load_normalizer
    from rrf_ray.engine.ray_runtime import quiet_ray_data
    from rrf_ray.locomotion.datasets import env_windows
    from rrf_ray.rrf.extract import extract_reward

    quiet_ray_data()
    paths, env = SweepPaths(storage), config["env"]
    fingerprints = read_fingerprints(storage)
    base, expert = (model_key(spec, env, role, fingerprints) for role in ("base", "expert"))
    normalizer = load_normalizer(paths.artifacts.require("diffusers", base, f"the base diffuser of {env}"))
    extraction = extract_reward(paths, base, expert, lambda role, split: env_windows(spec, env, role, split, normalizer),
                                spec.pregen, spec.reward_of(env), spec.resources, spec.seed, f"reward-{env}",
                                callbacks=tune_report_callbacks())
    tune.report({"done": 1, "artifact": extraction.key, **extraction.summary()})


# -- stage 4: rollouts ------------------------------------------------------------------

def load_guide(spec: LocomotionSweepSpec, paths: SweepPaths, env: str, method: str, fingerprints: dict, device):
    """The guide rho(x, t) of a method on normalised windows (None for unsteered)."""
    if method == "unsteered":
        return None
    kind = "rewards" if method == "rrf" else "discriminators"
    path = paths.artifacts.require(kind, guide_key(spec, env, method, fingerprints), f"the {method} model of {env}")
    if method == "rrf":
        from rrf_ray.rrf.reward_nets import load_reward

        return load_reward(path, device=device)
    from rrf_ray.locomotion.discriminator import load_discriminator

    return load_discriminator(path, device=str(device)).guide()


def rollout_metrics(spec: LocomotionSweepSpec, paths: SweepPaths, row: dict, fingerprints: dict) -> dict:
    """Every seed of one (env, method, omega, t_stopgrad): receding-horizon rollouts, pooled."""
    import torch

    from rrf_ray.diffusion.checkpoint import load_diffuser
    from rrf_ray.engine.precision import configure_precision
    from rrf_ray.locomotion.rollouts import RolloutResult, guidance_spec, rollout, set_threads

    set_threads(spec.rollout.threads)
    device = torch.device("cuda" if spec.rollout.gpus > 0 and torch.cuda.is_available() else "cpu")
    configure_precision(device)
    env, method = row["env"], row["method"]
    base_dir = paths.artifacts.require("diffusers", model_key(spec, env, "base", fingerprints),
                                       f"the base diffuser of {env}")
    planner = load_diffuser(base_dir, device=device)
    guide = load_guide(spec, paths, env, method, fingerprints, device)
    guidance = guidance_spec(row["omega"], row["t_stopgrad"], spec.search.n_guide_steps,
                             spec.search.scale_grad_by_std, spec.search.guidance_form)
    t0 = time.perf_counter()
    results = [rollout(planner, spec.environments[env].env_id, spec.rollout.n_envs, spec.rollout.max_steps, seed,
                       spec.environments[env].reference_scores, guide=guide, guidance=guidance)
               for seed in row["seeds"]]
    pooled = RolloutResult(*(np.concatenate([getattr(r, f) for r in results])
                             for f in ("returns", "lengths", "scores")))
    return {**pooled.summary(), "seed_scores": [float(r.scores.mean()) for r in results],
            "rollout_s": round(time.perf_counter() - t0, 2)}


def run_rollout_trial(config: dict, spec: LocomotionSweepSpec, storage: SweepStorage) -> None:
    """Tune trial: one row of the rollout grid (or one Optuna sample), result.json + metrics to Tune."""
    from ray import tune

    row = dict(config["trial"]) if "trial" in config else {
        "env": config["env"], "method": config["method"], "omega": float(config["omega"]),
        "t_stopgrad": int(config["t_stopgrad"]), "seeds": list(spec.search.seeds)}
    row.setdefault("trial_id", trial_id(row["env"], row["method"], row["omega"], row["t_stopgrad"],
                                        row["seeds"][0] if len(row["seeds"]) == 1 else None))
    paths = SweepPaths(storage)
    tid = row["trial_id"]
    fingerprints = read_fingerprints(storage)
    record = {**row, "key": rollout_key(spec, row, fingerprints)}
    metrics = recorded_trial(paths, tid, record, lambda: rollout_metrics(spec, paths, row, fingerprints))
    tune.report(_tune_metrics(metrics))


def _tune_metrics(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, list)}


def _trial_resources(spec: LocomotionSweepSpec) -> dict:
    res = {"cpu": float(spec.rollout.threads)}
    if spec.rollout.gpus > 0:
        res["gpu"] = spec.rollout.gpus
    return res


def run_optuna_stage(spec: LocomotionSweepSpec, storage: SweepStorage, resume: bool, env: str, method: str):
    """An Optuna search over (omega, t_stopgrad) for one environment and method."""
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ImportError("search.search: optuna needs the optional extra: pip install -e '.[optuna]'") from None
    from ray import tune

    s = spec.search
    space = {"env": env, "method": method, "omega": tune.uniform(min(s.omegas), max(s.omegas)),
             "t_stopgrad": tune.choice(list(s.t_stopgrads))}
    return run_stage(f"{STAGE_ROLLOUTS}-optuna-{env}-{method}", run_rollout_trial, space, spec, storage, resume,
                     ROLLOUT_METRICS, _trial_resources(spec),
                     search=Search(OptunaSearch(seed=spec.seed), metric="score", mode="max",
                                   num_samples=s.optuna_samples))


def check_search_available(spec: LocomotionSweepSpec) -> None:
    if spec.search.search == "optuna":
        try:
            import optuna  # noqa: F401
        except ImportError:
            from rrf_ray.engine.spec import ConfigError

            raise ConfigError("search.search is optuna, but Optuna is not installed: "
                              "pip install -e '.[optuna]' (or use search.search: grid)") from None


# -- the whole sweep ----------------------------------------------------------------------

def run_locomotion_sweep(spec: LocomotionSweepSpec, storage: SweepStorage, resume: bool = False,
                         address: str | None = None) -> Path:
    """All stages; returns the report path (in the local directory or mirror)."""
    from ray import tune

    from rrf_ray.engine.ray_runtime import init_ray, quiet_ray_data
    from rrf_ray.locomotion.report import write_locomotion_report

    check_search_available(spec)
    fingerprints = check_and_fingerprint(spec)  # before any work: a missing dataset fails here
    from rrf_ray.locomotion.datasets import data_scores

    sweep_dir = storage.local
    write_sweep_files(storage, {"spec.json": spec.model_dump_json(indent=1),
                                "trials.json": json.dumps(trial_table(spec), indent=1),
                                DATASETS_FILE: json.dumps(fingerprints, indent=1),
                                DATA_SCORES_FILE: json.dumps(data_scores(spec), indent=1)})
    init_ray(address, num_cpus=spec.resources.num_cpus or (os.cpu_count() or 1) + 1)
    quiet_ray_data()
    envs = list(spec.environments)
    methods = spec.search.methods

    models = ["base"] + (["expert"] if "rrf" in methods else []) + \
        (["discriminator"] if "discriminator" in methods else [])
    print(f"[locomotion] stage 2/5: models ({', '.join(models)}) of {', '.join(envs)}", flush=True)
    grid = run_stage(STAGE_MODELS, train_model,
                     {"job": tune.grid_search([{"env": e, "model": m} for e in envs for m in models])},
                     spec, storage, resume, ["step", "loss", "val_accuracy"])
    raise_if_any_failed(grid, "model training")
    if "rrf" in methods:
        print("[locomotion] stage 3/5: relative rewards", flush=True)
        grid = run_stage(STAGE_REWARDS, train_env_reward, {"env": tune.grid_search(envs)}, spec, storage, resume,
                         ["step", "loss", "cosine", "val_cosine"])
        raise_if_any_failed(grid, "reward training")
    rows = trial_table(spec)
    print(f"[locomotion] stage 4/5: rollouts ({len(rows)} grid trials"
          + (", Optuna search per environment and method" if spec.search.search == "optuna" else "") + ")",
          flush=True)
    if rows:
        run_stage(STAGE_ROLLOUTS, _unpack_rollout, {"trial": tune.grid_search(rows)}, spec, storage, resume,
                  ROLLOUT_METRICS, trial_resources=_trial_resources(spec))
    if spec.search.search == "optuna":
        for env in envs:
            for method in methods:
                if method != "unsteered":
                    run_optuna_stage(spec, storage, resume, env, method)
    print("[locomotion] stage 5/5: report", flush=True)
    storage.pull("trials", refresh=True)
    report = write_locomotion_report(sweep_dir)
    for name in ("report.md", "results.csv", "figures"):
        if (sweep_dir / name).exists():
            storage.push(name)
    print(f"[locomotion] report: {storage.uri_of('report.md') if storage.is_remote else report}", flush=True)
    return report


def _unpack_rollout(config: dict, spec: LocomotionSweepSpec, storage: SweepStorage) -> None:
    run_rollout_trial(config, spec, storage)


# -- dry run -----------------------------------------------------------------------------

def dry_run(spec: LocomotionSweepSpec) -> str:
    from rrf_ray.locomotion.datasets import missing_datasets_message, root_of

    s, r = spec.search, spec.resources
    rows = trial_table(spec)
    models = ["base"] + (["expert"] if "rrf" in s.methods else []) + \
        (["discriminator"] if "discriminator" in s.methods else [])
    per_run = f"{r.num_workers} worker(s) x {r.cpus_per_worker} CPU" + (f" + {r.gpus_per_worker} GPU" if r.use_gpu else "")
    lines = [f"sweep {spec.name}: locomotion steering, {len(spec.environments)} environment(s), "
             f"methods {', '.join(s.methods)}, search {s.search}",
             f"stage 1 datasets (Minari root {root_of(spec)}):"]
    for env, e in spec.environments.items():
        lines.append(f"  {env}: {e.env_id}, base {e.base_dataset}, expert {e.expert_dataset}, H = {spec.horizon(env)}")
    missing = missing_datasets_message(spec)
    lines.append("  all datasets present" if missing is None else "  WARNING: " + missing.replace("\n", "\n  "))
    lines += [f"stage 2 models: {len(models) * len(spec.environments)} Ray Train runs ({', '.join(models)}; "
              f"diffusers {spec.diffusion.train_steps:,} steps, discriminator {spec.discriminator.train_steps:,}; "
              f"{per_run})"]
    if "rrf" in s.methods:
        lines.append(f"stage 3 rewards: {len(spec.environments)} x ({spec.pregen.algorithm} triples, "
                     f"{spec.reward.kind} reward {spec.reward.train_steps:,} steps)")
    n_rollouts = spec.rollout.n_envs * spec.rollout.max_steps
    if s.search == "grid":
        lines.append(f"stage 4 rollouts: {len(rows)} trials (omega {s.omegas} x t_stopgrad {s.t_stopgrads} x "
                     f"seeds {s.seeds}), each {spec.rollout.n_envs} rollouts of <= {spec.rollout.max_steps} steps")
    else:
        n_opt = sum(m != "unsteered" for m in s.methods) * len(spec.environments)
        lines.append(f"stage 4 rollouts: {len(rows)} unsteered trials + {n_opt} Optuna searches of "
                     f"{s.optuna_samples} samples (omega in [{min(s.omegas)}, {max(s.omegas)}], t_stopgrad in "
                     f"{s.t_stopgrads}), each over seeds {s.seeds}")
    lines += ["stage 5 report: report.md (Table 1), results.csv, figures/score_vs_omega.png", ""]
    if rows:
        lines.append(f"{'trial':<40} {'env':<12} {'method':<14} {'omega':>7} {'t_stop':>6} {'seed':>4}")
        lines += [f"{t['trial_id']:<40} {t['env']:<12} {t['method']:<14} {t['omega']:>7g} {t['t_stopgrad']:>6} "
                  f"{t['seeds'][0]:>4}" for t in rows]
    n_trials = len(rows) + (0 if s.search == "grid" else
                            s.optuna_samples * len(s.seeds) * sum(m != "unsteered" for m in s.methods)
                            * len(spec.environments))
    n_envs = len(spec.environments)
    n_diffusers = n_envs * (1 + ("rrf" in s.methods))
    work = {"diffuser_samples_per_s": n_diffusers * spec.diffusion.train_steps * spec.diffusion.batch_size,
            "plans_per_s": n_trials * n_rollouts}
    if "rrf" in s.methods:
        work["reward_samples_per_s"] = n_envs * spec.reward.train_steps * spec.reward.batch_size
    hours, rate_lines = spec.estimate.hours(work)
    device = "GPU" if r.use_gpu or spec.rollout.gpus > 0 else "CPU-worker"
    lines += ["", f"{len(rows)} grid trials; {n_trials * n_rollouts:,} plans in rollouts "
              f"({n_trials * n_rollouts * spec.diffusion.n_timesteps:,} denoising passes)",
              f"estimated time: {hours:,.1f} {device}-hours (triples and the discriminator not included):"] + rate_lines
    return "\n".join(lines)
