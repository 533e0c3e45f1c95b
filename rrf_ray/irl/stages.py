"""The IRL sweep (`experiment: irl`), as its list of stages on the engine.

  1. base data: reward-agnostic Maze2D data of the maze (Ray tasks, a Minari dataset);
  2. base diffuser: one Ray Train run (a Tune trial);
  3. experts: receding-horizon rollouts of the base guided by the true reward (Ray tasks, a
     Minari dataset), or a user's Minari dataset; cut into K-row segments (Algorithm 5);
  4. methods: a Tune grid over method x seed, each trial learning its reward or policy if it
     has one (Algorithm 4 per metric, behaviour cloning, the relative reward) and evaluating it
     under the one protocol (irl.evaluation);
  5. the report (report.md, results.csv, figures).
Every artifact is content-addressed and every trial recorded, so `--resume` recomputes nothing finished.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from rrf_ray.engine.artifacts import artifact_key
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
from rrf_ray.irl.spec import IRLExperimentSpec
from rrf_ray.irl.true_reward import LinearMazeReward

STAGE_BASE, STAGE_METHODS = "stage2-base-diffuser", "stage4-methods"


def trial_id(method: str, seed: int) -> str:
    return f"{method}-seed{seed}"


def trial_table(spec: IRLExperimentSpec) -> list[dict]:
    return [{"trial_id": trial_id(m, s), "method": m, "seed": s} for m in spec.active_methods for s in spec.seeds]


def true_reward_of(spec: IRLExperimentSpec) -> LinearMazeReward:
    return LinearMazeReward(spec.maze(), spec.true_reward.weights, spec.true_reward.offset)


# -- keys: exactly the spec parts that determine each artifact --------------------------

def base_key(spec: IRLExperimentSpec) -> str:
    return artifact_key("irl-base", spec.layout, spec.data.fingerprint(), spec.data_seed, spec.windows,
                        spec.diffusion, spec.seeds[0])


def experts_key(spec: IRLExperimentSpec) -> str:
    if spec.experts.dataset is not None:
        return artifact_key("irl-user-experts", spec.experts.dataset)
    return artifact_key("irl-experts", base_key(spec), spec.true_reward, spec.experts)


def learned_key(spec: IRLExperimentSpec, method: str, seed: int) -> str:
    """What a method's learned part (reward or policy) depends on; the base's own for the two references."""
    if method in ("base", "true_reward"):
        return artifact_key("irl-reference", base_key(spec), method)
    parts: list = [method, experts_key(spec), seed]
    if spec.irl_metric(method):
        parts.append(spec.irl.model_dump(mode="json", exclude={"metrics", "log_every"}))
    elif method == "bc":
        parts.append(spec.bc)
    elif method == "rrf":
        parts.append(spec.rrf.model_dump(mode="json", exclude={"guidance"}))  # how it is rolled out: result_key
    return artifact_key("irl-learned", *parts)


def result_key(spec: IRLExperimentSpec, method: str, seed: int) -> str:
    """A trial's result: its learned part, the guidance it is rolled out with, and the protocol."""
    protocol = spec.evaluation.model_dump(mode="json", exclude={"guidance_scales"})  # each its own: guidance_for
    return artifact_key("irl-result", learned_key(spec, method, seed), spec.guidance_for(method), seed,
                        protocol, spec.true_reward)


# -- stage 1 and 3: data -----------------------------------------------------------------

def base_dataset_id(spec: IRLExperimentSpec) -> str:
    from rrf_ray.maze2d.datasets import dataset_id

    return dataset_id(spec.maze_name, None)


def make_base_dataset(spec: IRLExperimentSpec, paths: SweepPaths) -> None:
    from rrf_ray.maze2d.datasets import generate_maze2d

    generate_maze2d(spec.maze(), None, spec.data.base_transitions, spec.data_seed, spec.data, root=paths.datasets,
                    workers=spec.data.workers)


def base_windows(spec: IRLExperimentSpec, paths: SweepPaths, split: str, normalizer=None):
    from rrf_ray.data.windows import load_windows
    from rrf_ray.maze2d.datasets import how_to_make

    w = spec.windows
    return load_windows(base_dataset_id(spec), w.horizon, w.stride, split=split, root=paths.datasets,
                        normalizer=normalizer or "minmax", pad_end=w.pad_end,
                        how_to_make=how_to_make(spec.maze_name, None, paths.datasets))


def expert_source(spec: IRLExperimentSpec, paths: SweepPaths) -> tuple[str, Path | None]:
    """(dataset id, root) of the expert demonstrations: the sweep's own, or the user's (default Minari root)."""
    from rrf_ray.irl.experts import expert_dataset_id

    if spec.experts.dataset is not None:
        return spec.experts.dataset, None
    return expert_dataset_id(spec.maze_name, experts_key(spec)), paths.datasets


def check_user_experts(spec: IRLExperimentSpec) -> None:
    """A user's expert dataset must exist before anything runs (DatasetError naming it: exit 2)."""
    from rrf_ray.data.windows import open_dataset

    if spec.experts.dataset is not None:
        open_dataset(spec.experts.dataset, None, "Set experts.dataset to a Minari dataset id under "
                     "MINARI_DATASETS_PATH (or leave it unset to roll the experts out with the true reward).")


def make_experts(spec: IRLExperimentSpec, paths: SweepPaths) -> None:
    from rrf_ray.irl.experts import make_expert_dataset

    if spec.experts.dataset is not None:
        return
    did, root = expert_source(spec, paths)
    generation = json.loads(json.dumps({"key": experts_key(spec), "true_reward": spec.true_reward.model_dump(),
                                        "experts": spec.experts.model_dump(mode="json")}))
    make_expert_dataset(did, generation, str(paths.artifacts.path("diffusers", base_key(spec))), spec.maze(),
                        true_reward_of(spec), spec.experts, root=root)


def expert_episodes(spec: IRLExperimentSpec, paths: SweepPaths):
    from rrf_ray.irl.experts import load_episodes

    did, root = expert_source(spec, paths)
    return load_episodes(did, root)


# -- stage 2 and 4 trainables -------------------------------------------------------------

def train_base(config: dict, spec: IRLExperimentSpec, storage: SweepStorage) -> None:
    """Tune trial: the base diffuser."""
    from ray import tune

    from rrf_ray.diffusion.train import train_diffuser

    paths, key = SweepPaths(storage), base_key(spec)
    paths.artifacts.ensure("diffusers", key, lambda d: copy_checkpoint(
        train_diffuser(base_windows(spec, paths, "train"), spec.diffusion, spec.resources, paths.train,
                       f"irl-base-{key}", seed=spec.seeds[0], callbacks=tune_report_callbacks()), d))
    tune.report({"done": 1, "artifact": key})


def run_trial(config: dict, spec: IRLExperimentSpec, storage: SweepStorage) -> None:
    """Tune trial: one method and seed: learn what it learns, then evaluate it."""
    from ray import tune

    paths = SweepPaths(storage)
    method, seed = config["trial"]["method"], config["trial"]["seed"]
    tid = trial_id(method, seed)
    record = {"trial_id": tid, "method": method, "seed": seed, "key": result_key(spec, method, seed)}
    tune.report(recorded_trial(paths, tid, record,
                               lambda: method_work(spec, paths, method, seed, paths.trial_dir(tid))))


def method_work(spec: IRLExperimentSpec, paths: SweepPaths, method: str, seed: int, out: Path) -> dict:
    import torch

    from rrf_ray.diffusion.checkpoint import load_diffuser
    from rrf_ray.irl.evaluation import (
        evaluate_behaviour,
        evaluate_reward,
        save_reward_heatmap,
    )
    from rrf_ray.irl.rollouts import DiffuserActor

    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))
    out.mkdir(parents=True, exist_ok=True)
    timer = PhaseTimer()
    base_dir = paths.artifacts.path("diffusers", base_key(spec))
    diffuser = load_diffuser(base_dir)
    true_reward = true_reward_of(spec)
    metrics: dict = {}
    reward = None  # a learned reward (x, t) -> (B,), scored for ERC
    actor = None
    guidance = spec.guidance_for(method)
    if method == "base":
        actor = DiffuserActor(diffuser, seed=seed)
    elif method == "true_reward":
        actor = DiffuserActor(diffuser, true_reward.guide(diffuser.normalizer, diffuser.model.action_dim),
                              guidance, seed=seed)
    elif method == "bc":
        from rrf_ray.irl.bc import train_bc

        timer.start("learn")
        actor, metrics["bc_train_mse"] = train_bc(expert_episodes(spec, paths), spec.bc, seed=seed)
    elif spec.irl_metric(method):
        timer.start("learn")
        reward = learned_irl_reward(spec, paths, spec.irl_metric(method), seed, base_dir, diffuser)
        actor = DiffuserActor(diffuser, reward, guidance, seed=seed)
        metrics.update(expert_fit(spec, paths, diffuser, reward, guidance, seed))
    elif method == "rrf":
        timer.start("learn")
        reward, fit = learned_relative_reward(spec, paths, seed, base_dir, diffuser)
        metrics.update(fit)
        actor = DiffuserActor(diffuser, reward, guidance, seed=seed)
    else:
        raise ValueError(f"unknown method {method!r}")

    timer.start("rollouts")
    behaviour = evaluate_behaviour(actor, true_reward, spec.evaluation, seed)
    metrics.update(behaviour.summary())
    np.savez_compressed(out / "rollouts.npz", observations=behaviour.rollouts.observations.astype(np.float32),
                        starts=behaviour.rollouts.starts, returns=behaviour.returns)
    if reward is not None:
        timer.start("erc")
        held = base_windows(spec, paths, "heldout", diffuser.normalizer)
        quality = evaluate_reward(reward, true_reward, held, spec.evaluation.erc_windows, seed)
        metrics["erc"] = quality.erc
        metrics["erc_windows"] = len(quality.learned)
        save_reward_heatmap(quality, spec.maze(), out / "heatmap.png",
                            f"{method} seed {seed}: learned reward, ERC {quality.erc:.3f}")
    return {**metrics, **timer.stop()}


def learned_irl_reward(spec: IRLExperimentSpec, paths: SweepPaths, metric: str, seed: int, base_dir, diffuser):
    """Algorithm 4's reward for `metric` (trained now, or the finished artifact)."""
    from rrf_ray.irl.experts import cut_segments
    from rrf_ray.irl.reward_learning import load_irl_reward, train_irl_reward

    key = learned_key(spec, f"irl_{metric}", seed)

    def learn(directory: Path) -> None:
        segments = cut_segments(expert_episodes(spec, paths), spec.irl.segment_steps, spec.windows.stride,
                                diffuser.normalizer)
        copy_checkpoint(train_irl_reward(segments, base_dir, spec.irl, metric, spec.resources, paths.train,
                                         f"irl-{metric}-{key}", seed=seed, callbacks=tune_report_callbacks()),
                        directory)

    return load_irl_reward(paths.artifacts.ensure("rewards", key, learn))


def expert_fit(spec: IRLExperimentSpec, paths: SweepPaths, diffuser, reward, guidance, seed: int) -> dict:
    """How close the learned reward's guided plans come to the expert segments, against the unguided base's."""
    from rrf_ray.irl.experts import cut_segments
    from rrf_ray.irl.reward_learning import segment_mse

    segments = cut_segments(expert_episodes(spec, paths), spec.irl.segment_steps, spec.windows.stride,
                            diffuser.normalizer)
    guided, unguided = segment_mse(diffuser.model, segments, reward, guidance, spec.irl.segment_steps,
                                   spec.irl.compare_dims, seed)
    return {"segment_mse_guided": guided, "segment_mse_unguided": unguided}


def learned_relative_reward(spec: IRLExperimentSpec, paths: SweepPaths, seed: int, base_dir, diffuser):
    """The relative reward: expert diffuser fine-tuned on the expert rollouts, then the one extraction path."""
    from rrf_ray.data.windows import load_windows
    from rrf_ray.diffusion.train import train_diffuser
    from rrf_ray.rrf.extract import extract_reward
    from rrf_ray.rrf.reward_nets import load_reward

    store, key = paths.artifacts, learned_key(spec, "rrf", seed)
    ekey = artifact_key("irl-rrf-expert", key)
    w = spec.windows
    did, root = expert_source(spec, paths)

    def expert_windows(split: str):
        return load_windows(did, w.horizon, w.stride, split=split, root=root, normalizer=diffuser.normalizer,
                            pad_end=w.pad_end)

    # The expert diffuser learns from every demonstration, as the other methods do; the reward's triples
    # noise the training episodes' windows and validate on the held-out ones.
    store.ensure("diffusers", ekey, lambda d: copy_checkpoint(train_diffuser(
        expert_windows("all"), spec.rrf.expert.diffusion(spec.diffusion), spec.resources, paths.train,
        f"irl-rrf-expert-{ekey}", seed=seed, init_from=base_dir if spec.rrf.expert.init == "base" else None,
        callbacks=tune_report_callbacks()), d))

    def windows(role: str, split: str):  # the extraction reads each (role, split) once
        return base_windows(spec, paths, split, diffuser.normalizer) if role == "base" else expert_windows(split)

    extraction = extract_reward(paths, base_key(spec), ekey, windows, spec.rrf.pregen, spec.rrf.reward,
                                spec.resources, seed, "irl-rrf-reward", callbacks=tune_report_callbacks())
    return load_reward(extraction.path), extraction.summary()


# -- the sweep -------------------------------------------------------------------------------

def run_sweep(spec: IRLExperimentSpec, storage: SweepStorage, resume: bool = False, address: str | None = None) -> Path:
    from ray import tune

    from rrf_ray.engine.ray_runtime import init_ray, quiet_ray_data
    from rrf_ray.irl.report import write_report

    check_user_experts(spec)
    paths = SweepPaths(storage)
    write_sweep_files(storage, {"spec.json": spec.model_dump_json(indent=1),
                                "trials.json": json.dumps(trial_table(spec), indent=1)})
    init_ray(address, num_cpus=spec.resources.num_cpus or (os.cpu_count() or 1) + 1)
    quiet_ray_data()

    print(f"[sweep] stage 1/5: base data -> {paths.datasets}", flush=True)
    make_base_dataset(spec, paths)
    print("[sweep] stage 2/5: base diffuser", flush=True)
    grid = run_stage(STAGE_BASE, train_base, {"seed": tune.grid_search([spec.seeds[0]])}, spec, storage, resume,
                     ["step", "loss"])
    raise_if_any_failed(grid, "base diffuser")
    print("[sweep] stage 3/5: expert demonstrations", flush=True)
    make_experts(spec, paths)
    trials = trial_table(spec)
    print(f"[sweep] stage 4/5: {len(trials)} method trials", flush=True)
    # The methods that learn through the reverse chain first: the longest trials start earliest.
    order = sorted(trials, key=lambda t: (not spec.irl_metric(t["method"]), t["method"] != "rrf"))
    space = {"trial": tune.grid_search([{"method": t["method"], "seed": t["seed"]} for t in order])}
    run_stage(STAGE_METHODS, run_trial, space, spec, storage, resume,
              ["step", "loss", "return_mean", "erc"])
    print("[sweep] stage 5/5: report", flush=True)
    storage.pull("trials", refresh=True)
    report = write_report(storage.local)
    for name in ("report.md", "results.csv", "figures"):
        if (storage.local / name).exists():
            storage.push(name)
    print(f"[sweep] report: {storage.uri_of('report.md') if storage.is_remote else report}", flush=True)
    return report


def dry_run(spec: IRLExperimentSpec) -> str:
    from rrf_ray.diffusion.differentiable import estimate_backprop_memory
    from rrf_ray.diffusion.model import TrajectoryDiffuser
    from rrf_ray.irl.reward_net import build_irl_reward

    trials = trial_table(spec)
    e, v, irl = spec.experts, spec.evaluation, spec.irl
    transition_dim = 6  # PointMaze: [action (2) | x, y, vx, vy]
    model = TrajectoryDiffuser(transition_dim, 2, spec.windows.horizon, spec.diffusion)
    net = build_irl_reward(irl, spec.windows.horizon, transition_dim)
    n_segments = (len(e.starts) * e.rollouts_per_start * e.segments_per_rollout(spec.windows.stride, irl.segment_steps)
                  if spec.experts.dataset is None else None)
    batch = min(irl.batch_size, n_segments) if n_segments else irl.batch_size
    memory = estimate_backprop_memory(model, net, irl.guidance, batch, irl.backprop_steps)
    experts = (f"the local Minari dataset {e.dataset!r}" if e.dataset else
               f"{len(e.starts)} starts x {e.rollouts_per_start} rollouts x {e.steps} steps of the base guided by "
               f"the true reward ({n_segments} segments of K = {irl.segment_steps})")
    lines = [
        f"sweep {spec.name}: IRL on {spec.maze_name}, true reward {spec.true_reward.offset:g} + "
        f"{spec.true_reward.weights[0]:g} x + {spec.true_reward.weights[1]:g} y",
        f"stage 1 base data: {spec.data.base_transitions:,} transitions",
        f"stage 2 base diffuser: H {spec.windows.horizon} (stride {spec.windows.stride}), T "
        f"{spec.diffusion.n_timesteps}, {spec.diffusion.train_steps:,} steps",
        f"stage 3 experts: {experts}",
        f"stage 4 methods: {len(trials)} trials ({', '.join(spec.active_methods)} x seeds {spec.seeds}); "
        f"Algorithm 4: {irl.epochs} epochs, batch {batch}, {irl.backprop_steps or spec.diffusion.n_timesteps} "
        f"differentiable steps; evaluation: {len(v.starts)} starts x {v.rollouts_per_start} rollouts x "
        f"{v.steps} steps, ERC on {v.erc_windows} held-out base windows",
        f"  {memory.describe()}",
        "stage 5 report: report.md, results.csv, figures/",
        "", f"{'trial':<28} {'method':<16} {'seed':>4}",
    ]
    lines += [f"{t['trial_id']:<28} {t['method']:<16} {t['seed']:>4}" for t in trials]
    n_irl = sum(spec.irl_metric(t["method"]) is not None for t in trials)
    per_epoch = math.ceil(n_segments / batch) if n_segments else 1
    hours, rate_lines = spec.estimate.hours({
        "diffuser_samples_per_s": spec.diffusion.train_steps * spec.diffusion.batch_size,
        "irl_steps_per_s": n_irl * irl.epochs * per_epoch})
    lines += ["", f"estimated training time: {hours:,.1f} {'GPU' if spec.resources.use_gpu else 'CPU-worker'}-hours "
              f"(experts and evaluation rollouts not included{'' if n_segments else '; one batch per epoch assumed'}):"]
    return "\n".join(lines + rate_lines)
