"""`python -m rrf_ray.sweep locomotion`: steering a base diffuser with the relative reward (docs/locomotion.md).

Stages, each idempotent (content-addressed artifacts under the sweep directory, as in Maze2D):
  1. datasets: every environment's base and expert Minari dataset is checked before any
     work (a missing one fails, naming the ids and how to provide them) and fingerprinted;
  2. models: a Tune grid over environment x {base, expert, discriminator} x model seed of Ray
     Train runs;
  3. rewards: per environment and model seed, training triples (Algorithm 1 on mixed windows by
     default, or Algorithm 2) as Parquet shards, then the value-U-Net reward through Ray Data;
  4. selection rollouts: a Tune grid over environment x steered method x omega x t_stopgrad x
     model seed x selection seed (or an Optuna search per environment, method and model seed);
     each trial runs vectorised receding-horizon rollouts and records their D4RL-normalised scores;
  5. report rollouts: per environment and model seed, the unsteered planner and each steered
     method's chosen setting (locomotion.selection) on the report seeds, fresh rollouts that
     share their environment and noise seeds across methods (so differences are paired); with
     `transfer_seeds`, the same on base diffusers of those seeds (trained in stage 2), each
     steered by every model seed's reward and discriminator at that model seed's chosen setting;
  6. the report (protocol card, Table 1 from the report rollouts, paired differences, transfer).
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
from rrf_ray.locomotion.selection import REPORT, SELECTION, TRANSFER, base_seed_of
from rrf_ray.locomotion.spec import LocomotionSweepSpec
from rrf_ray.rrf.extract import extraction_keys

STAGE_MODELS, STAGE_REWARDS = "stage2-models", "stage3-rewards"
STAGE_SELECTION, STAGE_REPORT = "stage4-selection-rollouts", "stage5-report-rollouts"
DATASETS_FILE = "datasets.json"
DATA_SCORES_FILE = "data_scores.json"  # the base and expert data's own scores, for Table 1
ROLLOUT_METRICS = ["score", "score_se", "return_mean", "length_mean"]


# -- the trial table --------------------------------------------------------------------

def trial_id(env: str, method: str, omega: float | None, t_stopgrad: int | None, model_seed: int, phase: str,
             seed: int | None, base_seed: int | None = None) -> str:
    parts = [env, method]
    if method != "unsteered":
        parts += [f"w{omega:g}", f"ts{t_stopgrad}"]
    parts += [f"model{model_seed}"]
    if base_seed is not None and base_seed != model_seed:
        parts += [f"base{base_seed}"]
    parts += [phase + ("-seeds" if seed is None else str(seed))]
    return "-".join(parts)


def _row(env: str, method: str, omega: float, t: int, model_seed: int, phase: str, seed: int,
         base_seed: int | None = None) -> dict:
    """One rollout trial. `model_seed` names the guide (reward or discriminator) and, unless `base_seed`
    says otherwise, the base diffuser that plans."""
    row = {"trial_id": trial_id(env, method, omega, t, model_seed, phase, seed, base_seed), "env": env,
           "method": method, "omega": float(omega), "t_stopgrad": int(t), "model_seed": int(model_seed),
           "phase": phase, "seeds": [int(seed)]}
    if base_seed is not None:
        row["base_seed"] = int(base_seed)
    return row


def selection_table(spec: LocomotionSweepSpec) -> list[dict]:
    """The selection grid's trials (none with Optuna, which samples its own)."""
    s = spec.search
    if s.search != "grid":
        return []
    return [_row(env, method, w, t, m, SELECTION, seed) for env in spec.environments for method in s.steered_methods
            for w in s.omegas for t in s.t_stopgrads for m in spec.seeds for seed in s.selection_seeds]


def report_table(spec: LocomotionSweepSpec, chosen: dict) -> list[dict]:
    """The report trials: unsteered, and each steered method at its chosen setting (`chosen`:
    locomotion.selection.chosen_settings), per environment and model seed, on every report seed.
    A steered method without a chosen setting (every selection trial failed) gets no report trial."""
    rows = []
    for env in spec.environments:
        for m in spec.seeds:
            for method in spec.search.methods:
                if method == "unsteered":
                    setting = (0.0, 0)
                elif (env, method, m) in chosen:
                    setting = (chosen[env, method, m].omega, chosen[env, method, m].t_stopgrad)
                else:
                    continue
                rows += [_row(env, method, *setting, m, REPORT, seed) for seed in spec.search.report_seeds]
    return rows


def transfer_table(spec: LocomotionSweepSpec, chosen: dict) -> list[dict]:
    """The transfer trials on the report seeds: per environment and transfer base b, the unsteered planner
    of base b (model seed b: no guide), and every model seed's steered methods at that model seed's chosen
    setting, planning with base b instead of their own base."""
    rows = []
    for env in spec.environments:
        for b in spec.transfer_seeds:
            if "unsteered" in spec.search.methods:
                rows += [_row(env, "unsteered", 0.0, 0, b, TRANSFER, seed) for seed in spec.search.report_seeds]
            for m in spec.seeds:
                for method in spec.search.steered_methods:
                    c = chosen.get((env, method, m))
                    if c is not None:
                        rows += [_row(env, method, c.omega, c.t_stopgrad, m, TRANSFER, seed, base_seed=b)
                                 for seed in spec.search.report_seeds]
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


def model_key(spec: LocomotionSweepSpec, env: str, model: str, fingerprints: dict, seed: int) -> str:
    if model == "discriminator":
        return artifact_key("loco-discriminator", data_part(spec, env, fingerprints), spec.reward_of(env),
                            spec.discriminator, spec.diffusion.n_timesteps, seed)
    return artifact_key(f"loco-{model}", data_part(spec, env, fingerprints), spec.diffusion_of(env), seed)


def model_kind(model: str) -> str:
    return "discriminators" if model == "discriminator" else "diffusers"


def reward_key(spec: LocomotionSweepSpec, env: str, fingerprints: dict, seed: int) -> str:
    return extraction_keys(model_key(spec, env, "base", fingerprints, seed),
                           model_key(spec, env, "expert", fingerprints, seed), spec.pregen, spec.reward_of(env),
                           seed)[1]


def guide_key(spec: LocomotionSweepSpec, env: str, method: str, fingerprints: dict, seed: int) -> str | None:
    if method == "rrf":
        return reward_key(spec, env, fingerprints, seed)
    if method == "discriminator":
        return model_key(spec, env, "discriminator", fingerprints, seed)
    return None


def rollout_key(spec: LocomotionSweepSpec, row: dict, fingerprints: dict) -> str:
    env, m = row["env"], row["model_seed"]
    return artifact_key("loco-rollout", model_key(spec, env, "base", fingerprints, base_seed_of(row)),
                        guide_key(spec, env, row["method"], fingerprints, m), row["omega"], row["t_stopgrad"],
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
    env, model, seed = config["job"]["env"], config["job"]["model"], config["job"]["seed"]
    fingerprints = read_fingerprints(storage)
    key = model_key(spec, env, model, fingerprints, seed)

    def train(directory: Path) -> None:
        normalizer = fit_normalizer(spec, env)  # base and expert together: both models share it
        if model == "discriminator":
            from rrf_ray.locomotion.discriminator import train_discriminator

            base = env_windows(spec, env, "base", "train", normalizer)
            expert = env_windows(spec, env, "expert", "train", normalizer)
            rng = np.random.default_rng(seed)
            held = [env_windows(spec, env, role, "heldout", normalizer) for role in ("base", "expert")]
            val = [w.batch(rng.integers(len(w), size=min(len(w), 2048))) for w in held]
            result = train_discriminator(base, expert, val[0], val[1], spec.discriminator, spec.reward_of(env),
                                         spec.diffusion, spec.resources, paths.train, f"discriminator-{env}-{key}",
                                         seed=seed, callbacks=tune_report_callbacks())
        else:
            from rrf_ray.diffusion.train import train_diffuser

            data = env_windows(spec, env, model, "train", normalizer)
            result = train_diffuser(data, spec.diffusion_of(env), spec.resources, paths.train, f"{model}-{env}-{key}",
                                    seed=seed, callbacks=tune_report_callbacks())
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
    paths, env, seed = SweepPaths(storage), config["job"]["env"], config["job"]["seed"]
    fingerprints = read_fingerprints(storage)
    base, expert = (model_key(spec, env, role, fingerprints, seed) for role in ("base", "expert"))
    normalizer = load_normalizer(paths.artifacts.require("diffusers", base, f"the base diffuser of {env}"))
    extraction = extract_reward(paths, base, expert, lambda role, split: env_windows(spec, env, role, split, normalizer),
                                spec.pregen, spec.reward_of(env), spec.resources, seed, f"reward-{env}-seed{seed}",
                                callbacks=tune_report_callbacks())
    tune.report({"done": 1, "artifact": extraction.key, **extraction.summary()})


# -- stage 4: rollouts ------------------------------------------------------------------

def load_guide(spec: LocomotionSweepSpec, paths: SweepPaths, env: str, method: str, fingerprints: dict, seed: int,
               device):
    """The guide rho(x, t) of a method on normalised windows (None for unsteered)."""
    if method == "unsteered":
        return None
    kind = "rewards" if method == "rrf" else "discriminators"
    path = paths.artifacts.require(kind, guide_key(spec, env, method, fingerprints, seed),
                                   f"the {method} model of {env} (model seed {seed})")
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
    env, method, m, b = row["env"], row["method"], row["model_seed"], base_seed_of(row)
    base_dir = paths.artifacts.require("diffusers", model_key(spec, env, "base", fingerprints, b),
                                       f"the base diffuser of {env} (seed {b})")
    planner = load_diffuser(base_dir, device=device)
    guide = load_guide(spec, paths, env, method, fingerprints, m, device)
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
    """Tune trial: one row of a rollout grid (or one Optuna sample over every selection seed), result.json
    + metrics to Tune."""
    from ray import tune

    row = dict(config["trial"]) if "trial" in config else {
        "env": config["env"], "method": config["method"], "omega": float(config["omega"]),
        "t_stopgrad": int(config["t_stopgrad"]), "model_seed": int(config["model_seed"]), "phase": SELECTION,
        "seeds": list(spec.search.selection_seeds)}
    row.setdefault("trial_id", trial_id(row["env"], row["method"], row["omega"], row["t_stopgrad"],
                                        row["model_seed"], row["phase"],
                                        row["seeds"][0] if len(row["seeds"]) == 1 else None, row.get("base_seed")))
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


def run_optuna_stage(spec: LocomotionSweepSpec, storage: SweepStorage, resume: bool, env: str, method: str,
                     model_seed: int):
    """An Optuna search over (omega, t_stopgrad) for one environment, method and model seed, on the
    selection seeds (its objective is their mean score; the report rolls the best out again)."""
    try:
        import optuna  # noqa: F401
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ImportError("search.search: optuna needs the optional extra: pip install -e '.[optuna]'") from None
    from ray import tune

    s = spec.search
    space = {"env": env, "method": method, "model_seed": model_seed,
             "omega": tune.uniform(min(s.omegas), max(s.omegas)), "t_stopgrad": tune.choice(list(s.t_stopgrads))}
    return run_stage(f"{STAGE_SELECTION}-optuna-{env}-{method}-model{model_seed}", run_rollout_trial, space, spec,
                     storage, resume, ROLLOUT_METRICS, _trial_resources(spec),
                     search=Search(OptunaSearch(seed=model_seed), metric="score", mode="max",
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
    from rrf_ray.locomotion.report import load_results, write_locomotion_report
    from rrf_ray.locomotion.selection import chosen_settings

    check_search_available(spec)
    fingerprints = check_and_fingerprint(spec)  # before any work: a missing dataset fails here
    from rrf_ray.locomotion.datasets import data_scores

    sweep_dir = storage.local
    selection = selection_table(spec)
    write_sweep_files(storage, {"spec.json": spec.model_dump_json(indent=1),
                                "trials.json": json.dumps(selection, indent=1),
                                DATASETS_FILE: json.dumps(fingerprints, indent=1),
                                DATA_SCORES_FILE: json.dumps(data_scores(spec), indent=1)})
    init_ray(address, num_cpus=spec.resources.num_cpus or (os.cpu_count() or 1) + 1)
    quiet_ray_data()
    envs, methods, seeds = list(spec.environments), spec.search.methods, spec.seeds

    models = ["base"] + (["expert"] if "rrf" in methods else []) + \
        (["discriminator"] if "discriminator" in methods else [])
    transfer = spec.transfer_seeds
    print(f"[locomotion] stage 2/6: models ({', '.join(models)}) of {', '.join(envs)}, model seeds {seeds}"
          + (f", transfer bases {transfer}" if transfer else ""), flush=True)
    jobs = [{"env": e, "model": m, "seed": s} for e in envs for s in seeds for m in models]
    jobs += [{"env": e, "model": "base", "seed": b} for e in envs for b in transfer]
    grid = run_stage(STAGE_MODELS, train_model, {"job": tune.grid_search(jobs)},
                     spec, storage, resume, ["step", "loss", "val_accuracy"])
    raise_if_any_failed(grid, "model training")
    if "rrf" in methods:
        print("[locomotion] stage 3/6: relative rewards", flush=True)
        grid = run_stage(STAGE_REWARDS, train_env_reward,
                         {"job": tune.grid_search([{"env": e, "seed": s} for e in envs for s in seeds])},
                         spec, storage, resume, ["step", "loss", "cosine", "val_cosine"])
        raise_if_any_failed(grid, "reward training")
    s = spec.search
    print(f"[locomotion] stage 4/6: selection rollouts (seeds {s.selection_seeds}; "
          + (f"{len(selection)} grid trials)" if s.search == "grid" else
             "an Optuna search per environment, method and model seed)"), flush=True)
    if selection:
        run_stage(STAGE_SELECTION, _unpack_rollout, {"trial": tune.grid_search(selection)}, spec, storage, resume,
                  ROLLOUT_METRICS, trial_resources=_trial_resources(spec))
    if s.search == "optuna":
        for env in envs:
            for method in s.steered_methods:
                for seed in seeds:
                    run_optuna_stage(spec, storage, resume, env, method, seed)
    storage.pull("trials", refresh=True)
    chosen = chosen_settings(load_results(sweep_dir)[0])
    report_rows = report_table(spec, chosen) + transfer_table(spec, chosen)
    write_sweep_files(storage, {"trials.json": json.dumps(selection + report_rows, indent=1)})
    print(f"[locomotion] stage 5/6: report rollouts of the chosen settings ({len(report_rows)} trials on fresh "
          f"seeds {s.report_seeds}" + (f", transfer bases {transfer} included" if transfer else "") + ")",
          flush=True)
    if report_rows:
        run_stage(STAGE_REPORT, _unpack_rollout, {"trial": tune.grid_search(report_rows)}, spec, storage, resume,
                  ROLLOUT_METRICS, trial_resources=_trial_resources(spec))
    print("[locomotion] stage 6/6: report", flush=True)
    storage.pull("trials", refresh=True)
    report = write_locomotion_report(sweep_dir)
    for name in ("report.md", "report.html", "results.csv", "figures"):
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
    rows = selection_table(spec)
    n_envs, n_seeds, n_steered = len(spec.environments), len(spec.seeds), len(s.steered_methods)
    models = ["base"] + (["expert"] if "rrf" in s.methods else []) + \
        (["discriminator"] if "discriminator" in s.methods else [])
    per_run = f"{r.num_workers} worker(s) x {r.cpus_per_worker} CPU" + (f" + {r.gpus_per_worker} GPU" if r.use_gpu else "")
    lines = [f"sweep {spec.name}: locomotion steering, {n_envs} environment(s), methods {', '.join(s.methods)}, "
             f"model seeds {spec.seeds}, search {s.search}",
             f"stage 1 datasets (Minari root {root_of(spec)}):"]
    for env, e in spec.environments.items():
        lines.append(f"  {env}: {e.env_id}, base {e.base_dataset}, expert {e.expert_dataset}, H = {spec.horizon(env)}")
    missing = missing_datasets_message(spec)
    lines.append("  all datasets present" if missing is None else "  WARNING: " + missing.replace("\n", "\n  "))
    n_transfer = len(spec.transfer_seeds)
    lines += [f"stage 2 models: {len(models) * n_envs * n_seeds + n_envs * n_transfer} Ray Train runs "
              f"({', '.join(models)} x model seeds" + (f", base x transfer seeds {spec.transfer_seeds}" if n_transfer
                                                        else "") + "; "
              f"diffusers {spec.diffusion.train_steps:,} steps, discriminator {spec.discriminator.train_steps:,}; "
              f"{per_run})"]
    if "rrf" in s.methods:
        lines.append(f"stage 3 rewards: {n_envs * n_seeds} x ({spec.pregen.algorithm} triples, "
                     f"{spec.reward.kind} reward {spec.reward.train_steps:,} steps)")
    each = f"each {spec.rollout.n_envs} rollouts of <= {spec.rollout.max_steps} steps"
    if s.search == "grid":
        lines.append(f"stage 4 selection rollouts: {len(rows)} trials ({', '.join(s.steered_methods)} x omega "
                     f"{s.omegas} x t_stopgrad {s.t_stopgrads} x model seeds x selection seeds "
                     f"{s.selection_seeds}), {each}")
        n_selection = len(rows)
    else:
        n_opt = n_steered * n_envs * n_seeds
        n_selection = s.optuna_samples * len(s.selection_seeds) * n_opt
        lines.append(f"stage 4 selection rollouts: {n_opt} Optuna searches of {s.optuna_samples} samples (omega in "
                     f"[{min(s.omegas)}, {max(s.omegas)}], t_stopgrad in {s.t_stopgrads}), each over selection "
                     f"seeds {s.selection_seeds}, {each}")
    n_report = n_envs * n_seeds * len(s.methods) * len(s.report_seeds)
    n_report_transfer = n_envs * n_transfer * (("unsteered" in s.methods) + n_seeds * n_steered) * len(s.report_seeds)
    lines += [f"stage 5 report rollouts: {n_report} trials (unsteered and each steered method's chosen setting x "
              f"model seeds x fresh report seeds {s.report_seeds}), {each}"
              + (f"; transfer: {n_report_transfer} more on bases {spec.transfer_seeds}" if n_transfer else ""),
              "stage 6 report: report.md (protocol card, Table 1, paired differences), results.csv, "
              "figures/score_vs_omega.png", ""]
    if rows:
        lines.append(f"{'selection trial':<54} {'env':<12} {'method':<14} {'omega':>7} {'t_stop':>6} {'model':>5} "
                     f"{'seed':>4}")
        lines += [f"{t['trial_id']:<54} {t['env']:<12} {t['method']:<14} {t['omega']:>7g} {t['t_stopgrad']:>6} "
                  f"{t['model_seed']:>5} {t['seeds'][0]:>4}" for t in rows]
    n_rollouts = spec.rollout.n_envs * spec.rollout.max_steps
    n_report += n_report_transfer
    n_trials = n_selection + n_report
    n_diffusers = n_envs * n_seeds * (1 + ("rrf" in s.methods)) + n_envs * n_transfer
    work = {"diffuser_samples_per_s": n_diffusers * spec.diffusion.train_steps * spec.diffusion.batch_size,
            "plans_per_s": n_trials * n_rollouts}
    if "rrf" in s.methods:
        work["reward_samples_per_s"] = n_envs * n_seeds * spec.reward.train_steps * spec.reward.batch_size
    hours, rate_lines = spec.estimate.hours(work)
    device = "GPU" if r.use_gpu or spec.rollout.gpus > 0 else "CPU-worker"
    lines += ["", f"{n_selection} selection trials + {n_report} report trials; {n_trials * n_rollouts:,} plans in "
              f"rollouts ({n_trials * n_rollouts * spec.diffusion.n_timesteps:,} denoising passes)",
              f"estimated time: {hours:,.1f} {device}-hours (triples and the discriminator not included):"] + rate_lines
    return "\n".join(lines)
