"""The IRL sweep (`experiment: irl`), as its list of stages on the engine.

Each entry of `seeds` is a whole run: its own base data, base diffuser, experts, learned parts and rollouts.

  1. base data, per seed: reward-agnostic Maze2D data of the maze (Ray tasks, a Minari dataset),
     generated with data_seed + seed;
  2. base diffusers: a Tune grid over seeds, each a Ray Train run;
  3. experts, per seed: receding-horizon rollouts of that seed's base guided by the true reward
     (Ray tasks, Minari datasets), or a user's Minari dataset: the training demonstrations, and the
     selection-only ones (their own rollouts and seed) that no method trains on;
  4. the relative reward's expert diffusers and training triples, a Tune grid over seeds (shared by
     both of its nets, so made once, before the method trials); GAIL and AIRL (irl/adversarial.py), a
     Tune grid over {gail, airl} x seed, each a PPO generator against its discriminator;
  5. methods: a Tune grid over method x net x seed (a net for the reward-learning methods only), each
     trial learning its reward or policy if it has one (Algorithm 4 per metric, behaviour cloning, the
     relative reward; GAIL's and AIRL's policies and AIRL's reward come from stage 4), choosing a learned reward's guidance scale on the selection-only experts
     (irl/selection.py), and evaluating it under the one protocol (irl/evaluation.py);
  6. the report (report.md with its protocol card, results.csv, figures).
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
from rrf_ray.irl.spec import ADVERSARIAL, IRLExperimentSpec
from rrf_ray.irl.true_reward import LinearMazeReward

STAGE_BASE, STAGE_RRF, STAGE_METHODS = "stage2-base-diffusers", "stage4-rrf-experts", "stage5-methods"
STAGE_ADVERSARIAL = "stage4-adversarial"


def trial_id(method: str, seed: int, net: str | None = None) -> str:
    return f"{method}-seed{seed}" if net is None else f"{method}-{net}-seed{seed}"


def trial_table(spec: IRLExperimentSpec) -> list[dict]:
    """One trial per method x net x seed (a net only for the reward-learning methods)."""
    return [{"trial_id": trial_id(m, s, n), "method": m, "net": n, "seed": s}
            for m in spec.active_methods for n in spec.nets_of(m) for s in spec.seeds]


def true_reward_of(spec: IRLExperimentSpec) -> LinearMazeReward:
    return LinearMazeReward(spec.maze(), spec.true_reward.weights, spec.true_reward.offset)


# -- keys: exactly the spec parts that determine each artifact --------------------------

def base_data_key(spec: IRLExperimentSpec, seed: int) -> str:
    return artifact_key("irl-base-data", spec.layout, spec.data.fingerprint(), spec.data_seed_of(seed))


def base_key(spec: IRLExperimentSpec, seed: int) -> str:
    """Run seed `seed`'s base diffuser: its data (data_seed + seed) and its training seed."""
    return artifact_key("irl-base", spec.layout, spec.data.fingerprint(), spec.data_seed_of(seed), spec.windows,
                        spec.diffusion, seed)


def experts_key(spec: IRLExperimentSpec, seed: int) -> str:
    """Run seed `seed`'s training demonstrations."""
    if spec.experts.dataset is not None:
        return artifact_key("irl-user-experts", spec.experts.dataset, spec.experts.n_selection_episodes())
    return artifact_key("irl-experts", base_key(spec, seed), spec.true_reward,
                        spec.experts.training(seed).fingerprint())


def selection_experts_key(spec: IRLExperimentSpec, seed: int) -> str:
    """Run seed `seed`'s selection-only demonstrations."""
    if spec.experts.dataset is not None:
        return artifact_key("irl-user-selection", spec.experts.dataset, spec.experts.n_selection_episodes())
    return artifact_key("irl-selection-experts", base_key(spec, seed), spec.true_reward,
                        spec.experts.selection(seed).fingerprint())


def rrf_expert_key(spec: IRLExperimentSpec, seed: int) -> str:
    """The relative reward's expert diffuser (shared by its nets)."""
    return artifact_key("irl-rrf-expert", experts_key(spec, seed), spec.rrf.expert, spec.diffusion, seed)


def learned_key(spec: IRLExperimentSpec, method: str, seed: int, net: str | None = None) -> str:
    """What a method's learned part (reward or policy) depends on; the base's own for the two references."""
    if method in ("base", "true_reward"):
        return artifact_key("irl-reference", base_key(spec, seed), method)
    if method == "airl_guided":  # AIRL's reward, guiding the base: AIRL's artifact and the base it guides
        return artifact_key("irl-learned-airl-guided", learned_key(spec, "airl", seed), base_key(spec, seed))
    parts: list = [method, experts_key(spec, seed), seed]
    if spec.irl_metric(method):
        parts.append(spec.irl_spec(net).model_dump(mode="json", exclude={"metrics", "log_every"}))
    elif method == "bc":
        parts.append(spec.bc)
    elif method in ADVERSARIAL:  # the environment it trains in: the maze, the demonstrations' starts and length
        parts += [spec.adversarial, spec.layout, spec.experts.starts, spec.experts.steps]
    elif method == "rrf":  # how it is rolled out: result_key
        parts.append({**spec.rrf.model_dump(mode="json", exclude={"guidance"}),
                      "reward": spec.rrf_reward(net).model_dump(mode="json")})
    return artifact_key("irl-learned", *parts)


def scale_protocol(spec: IRLExperimentSpec, method: str, seed: int) -> dict:
    """What sets a method's rollout guidance: a fixed guidance, or the selection (its candidates, criterion,
    noise seed and selection-only experts; the scale is then the selection's outcome)."""
    rule, candidates = spec.scale_rule(method)
    if rule != "selected":
        return {"rule": rule, "guidance": spec.guidance_for(method).model_dump(mode="json")}
    return {"rule": rule, "candidates": candidates, "seed": spec.selection_seed(seed),
            "guidance": spec.guidance_for(method).model_dump(mode="json", exclude={"scale"}),
            "experts": selection_experts_key(spec, seed), "k": spec.irl.segment_steps,
            "dims": spec.irl.compare_dims, "stride": spec.windows.stride}


def result_key(spec: IRLExperimentSpec, method: str, seed: int, net: str | None = None) -> str:
    """A trial's result: its learned part, how its guidance is set, and the protocol."""
    protocol = spec.evaluation.model_dump(mode="json", exclude={"guidance_scales"})  # each its own: scale_protocol
    return artifact_key("irl-result", learned_key(spec, method, seed, net), scale_protocol(spec, method, seed),
                        seed, protocol, spec.true_reward)


# -- stage 1 and 3: data -----------------------------------------------------------------

def base_dataset_id(spec: IRLExperimentSpec) -> str:
    from rrf_ray.maze2d.datasets import dataset_id

    return dataset_id(spec.maze_name, None)


def base_data_root(spec: IRLExperimentSpec, paths: SweepPaths, seed: int) -> Path:
    """Run seed `seed`'s base data: a Minari root of its own (the dataset id names the maze only)."""
    return paths.datasets / "irl-base" / base_data_key(spec, seed)


def make_base_dataset(spec: IRLExperimentSpec, paths: SweepPaths, seed: int) -> None:
    from rrf_ray.maze2d.datasets import generate_maze2d

    generate_maze2d(spec.maze(), None, spec.data.base_transitions, spec.data_seed_of(seed), spec.data,
                    root=base_data_root(spec, paths, seed), workers=spec.data.workers)


def base_windows(spec: IRLExperimentSpec, paths: SweepPaths, seed: int, split: str, normalizer=None):
    from rrf_ray.data.windows import load_windows
    from rrf_ray.maze2d.datasets import how_to_make

    w, root = spec.windows, base_data_root(spec, paths, seed)
    return load_windows(base_dataset_id(spec), w.horizon, w.stride, split=split, root=root,
                        normalizer=normalizer or "minmax", pad_end=w.pad_end,
                        how_to_make=how_to_make(spec.maze_name, None, root))


def expert_source(spec: IRLExperimentSpec, paths: SweepPaths, seed: int, role: str = "experts") -> tuple[str, Path]:
    """(dataset id, root) of run seed `seed`'s training demonstrations (role `experts`) or selection-only ones
    (role `selection`): the sweep's own rollouts, or the two parts of the user's dataset."""
    from rrf_ray.irl.experts import expert_dataset_id

    key = experts_key(spec, seed) if role == "experts" else selection_experts_key(spec, seed)
    return expert_dataset_id(spec.maze_name, key, role), paths.datasets


def check_user_experts(spec: IRLExperimentSpec) -> None:
    """A user's expert dataset must exist before anything runs (DatasetError naming it: exit 2)."""
    from rrf_ray.data.windows import open_dataset

    if spec.experts.dataset is not None:
        open_dataset(spec.experts.dataset, None, "Set experts.dataset to a Minari dataset id under "
                     "MINARI_DATASETS_PATH (or leave it unset to roll the experts out with the true reward).")


def expert_generation(spec: IRLExperimentSpec, seed: int, role: str) -> dict:
    key = experts_key(spec, seed) if role == "experts" else selection_experts_key(spec, seed)
    e = spec.experts.training(seed) if role == "experts" else spec.experts.selection(seed)
    return json.loads(json.dumps({"key": key, "true_reward": spec.true_reward.model_dump(),
                                  "experts": e.fingerprint()}))


def make_experts(spec: IRLExperimentSpec, paths: SweepPaths) -> None:
    """Every seed's training and selection-only demonstrations (all rollouts submitted at once)."""
    from rrf_ray.irl.experts import make_expert_datasets, split_user_dataset

    if spec.experts.dataset is not None:  # the same demonstrations for every seed: split once
        train, _ = expert_source(spec, paths, spec.seeds[0], "experts")
        selection, _ = expert_source(spec, paths, spec.seeds[0], "selection")
        split_user_dataset(spec.experts.dataset, spec.experts.n_selection_episodes(), train, selection, spec.maze(),
                           root=paths.datasets)
        return
    jobs = []
    for seed in spec.seeds:
        base_dir = str(paths.artifacts.path("diffusers", base_key(spec, seed)))
        roles = ["experts"] + (["selection"] if spec.experts.selection_rollouts_per_start else [])
        for role in roles:
            e = spec.experts.training(seed) if role == "experts" else spec.experts.selection(seed)
            jobs.append((expert_source(spec, paths, seed, role)[0], expert_generation(spec, seed, role), base_dir,
                         e, role))
    make_expert_datasets(jobs, spec.maze(), true_reward_of(spec), root=paths.datasets)


def expert_episodes(spec: IRLExperimentSpec, paths: SweepPaths, seed: int, role: str = "experts"):
    """(observations, actions) of run seed `seed`'s training demonstrations, the only ones any method learns
    from (`role="selection"`: the selection-only ones, which only the scale selection reads)."""
    from rrf_ray.irl.experts import load_episodes

    did, root = expert_source(spec, paths, seed, role)
    return load_episodes(did, root)


# -- stage 2, 4 and 5 trainables --------------------------------------------------------

def train_base(config: dict, spec: IRLExperimentSpec, storage: SweepStorage) -> None:
    """Tune trial: run seed config["seed"]'s base diffuser, on its own data, trained with that seed."""
    from ray import tune

    from rrf_ray.diffusion.train import train_diffuser

    seed = config["seed"]
    paths, key = SweepPaths(storage), base_key(spec, seed)
    paths.artifacts.ensure("diffusers", key, lambda d: copy_checkpoint(
        train_diffuser(base_windows(spec, paths, seed, "train"), spec.diffusion, spec.resources, paths.train,
                       f"irl-base-{key}", seed=seed, callbacks=tune_report_callbacks()), d))
    tune.report({"done": 1, "artifact": key})


def expert_windows(spec: IRLExperimentSpec, paths: SweepPaths, seed: int, split: str, normalizer):
    """Windows of run seed `seed`'s training demonstrations (never the selection-only ones)."""
    from rrf_ray.data.windows import load_windows

    w = spec.windows
    did, root = expert_source(spec, paths, seed, "experts")
    return load_windows(did, w.horizon, w.stride, split=split, root=root, normalizer=normalizer, pad_end=w.pad_end)


def rrf_windows(spec: IRLExperimentSpec, paths: SweepPaths, seed: int, normalizer):
    """The extraction's window loader: (role, split) -> windows (each read once)."""
    def windows(role: str, split: str):
        if role == "base":
            return base_windows(spec, paths, seed, split, normalizer)
        return expert_windows(spec, paths, seed, split, normalizer)

    return windows


def rrf_expert(spec: IRLExperimentSpec, paths: SweepPaths, seed: int) -> Path:
    """The relative reward's expert diffuser: fine-tuned from the base on the training demonstrations (all of
    them, as the other methods use them all)."""
    from rrf_ray.diffusion.checkpoint import load_normalizer
    from rrf_ray.diffusion.train import train_diffuser

    base_dir, ekey = paths.artifacts.path("diffusers", base_key(spec, seed)), rrf_expert_key(spec, seed)
    return paths.artifacts.ensure("diffusers", ekey, lambda d: copy_checkpoint(train_diffuser(
        expert_windows(spec, paths, seed, "all", load_normalizer(base_dir)), spec.rrf.expert.diffusion(spec.diffusion),
        spec.resources, paths.train, f"irl-rrf-expert-{ekey}", seed=seed,
        init_from=base_dir if spec.rrf.expert.init == "base" else None, callbacks=tune_report_callbacks()), d))


def prepare_rrf(config: dict, spec: IRLExperimentSpec, storage: SweepStorage) -> None:
    """Tune trial: run seed config["seed"]'s expert diffuser and reward triples, shared by the relative
    reward's nets (made here once, so that two net trials never build them at the same time)."""
    from ray import tune

    from rrf_ray.diffusion.checkpoint import load_normalizer
    from rrf_ray.rrf.extract import extraction_keys, make_triples

    seed = config["seed"]
    paths = SweepPaths(storage)
    bkey, ekey = base_key(spec, seed), rrf_expert_key(spec, seed)
    expert_dir = rrf_expert(spec, paths, seed)
    base_dir = paths.artifacts.path("diffusers", bkey)
    rewards = [extraction_keys(bkey, ekey, spec.rrf.pregen, spec.rrf_reward(n), seed) for n in spec.nets]
    if not all(paths.artifacts.is_done("rewards", r) for _, r in rewards):
        windows = rrf_windows(spec, paths, seed, load_normalizer(base_dir))
        make_triples(paths, rewards[0][0], base_dir, expert_dir, windows, spec.rrf.pregen, spec.resources, seed)
    tune.report({"done": 1, "artifact": ekey})


def adversarial_methods(spec: IRLExperimentSpec) -> list[str]:
    """The adversarial learners stage 4 trains: gail, airl (and airl for airl_guided)."""
    active = spec.active_methods
    return [k for k in ADVERSARIAL if k in active or (k == "airl" and "airl_guided" in active)]


def adversarial_artifact(spec: IRLExperimentSpec, paths: SweepPaths, kind: str, seed: int) -> Path:
    """GAIL's or AIRL's trained generator and reward of run seed `seed` (trained now, or the finished one)."""
    from rrf_ray.irl.adversarial import save_adversarial, train_adversarial

    key = learned_key(spec, kind, seed)

    def learn(directory: Path) -> None:
        torch_threads(spec)
        result = train_adversarial(kind, expert_episodes(spec, paths, seed), spec.maze(), spec.experts.starts,
                                   spec.experts.steps, spec.adversarial, seed, Path(directory) / "log")
        save_adversarial(result, directory)

    return paths.artifacts.ensure("policies", key, learn)


def train_adversarial_trial(config: dict, spec: IRLExperimentSpec, storage: SweepStorage) -> None:
    """Tune trial: GAIL or AIRL of one run seed."""
    from ray import tune

    job = config["job"]
    adversarial_artifact(spec, SweepPaths(storage), job["kind"], job["seed"])
    tune.report({"done": 1, "artifact": learned_key(spec, job["kind"], job["seed"])})


def torch_threads(spec: IRLExperimentSpec) -> None:
    import torch

    torch.set_num_threads(max(1, int(spec.resources.cpus_per_worker)))


def run_trial(config: dict, spec: IRLExperimentSpec, storage: SweepStorage) -> None:
    """Tune trial: one method, net and seed: learn what it learns, then evaluate it."""
    from ray import tune

    paths = SweepPaths(storage)
    t = config["trial"]
    method, net, seed = t["method"], t.get("net"), t["seed"]
    tid = trial_id(method, seed, net)
    record = {"trial_id": tid, "method": method, "net": net, "seed": seed, "key": result_key(spec, method, seed, net)}
    metrics = recorded_trial(paths, tid, record, lambda: method_work(spec, paths, method, seed, paths.trial_dir(tid),
                                                                      net))
    tune.report({k: v for k, v in metrics.items() if v is None or isinstance(v, (bool, int, float, str))})


def selection_segments(spec: IRLExperimentSpec, paths: SweepPaths, seed: int, normalizer) -> np.ndarray:
    """The selection-only expert segments of run seed `seed` (K = irl.segment_steps rows, normalised)."""
    from rrf_ray.irl.experts import cut_segments

    return cut_segments(expert_episodes(spec, paths, seed, "selection"), spec.irl.segment_steps,
                        spec.windows.stride, normalizer)


def selection_criterion(spec: IRLExperimentSpec, paths: SweepPaths, method: str, seed: int, diffuser, reward):
    """(distance(scale), facts): the selection criterion of a learned reward, on the selection-only expert
    segments of run seed `seed` alone. It is given no true reward and no report rollout: the plans of the
    base guided by `reward` at each scale, from each segment's first state, against the segment."""
    from rrf_ray.irl.selection import plan_distance

    segments = selection_segments(spec, paths, seed, diffuser.normalizer)
    k, dims, noise = spec.irl.segment_steps, spec.irl.compare_dims, spec.selection_seed(seed)

    def distance(scale: float) -> float:
        return plan_distance(diffuser.model, segments, reward, spec.guidance_for(method, scale), k, dims, noise)

    facts = {"selection_unguided": plan_distance(diffuser.model, segments, None, None, k, dims, noise),
             "selection_seed": noise, "selection_segments": len(segments),
             "selection_dataset": expert_source(spec, paths, seed, "selection")[0]}
    return distance, facts


def method_work(spec: IRLExperimentSpec, paths: SweepPaths, method: str, seed: int, out: Path,
                net: str | None = None) -> dict:
    import torch

    from rrf_ray.diffusion.checkpoint import load_diffuser
    from rrf_ray.irl.evaluation import (
        evaluate_behaviour,
        evaluate_reward,
        reward_distances,
        save_reward_heatmap,
    )
    from rrf_ray.irl.rollouts import DiffuserActor
    from rrf_ray.irl.selection import select_then_evaluate

    torch_threads(spec)
    out.mkdir(parents=True, exist_ok=True)
    timer = PhaseTimer()
    base_dir = paths.artifacts.path("diffusers", base_key(spec, seed))
    diffuser = load_diffuser(base_dir)
    true_reward = true_reward_of(spec)
    rule, candidates = spec.scale_rule(method)
    metrics: dict = {"scale_rule": rule}
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
        episodes = expert_episodes(spec, paths, seed)
        metrics.update(expert_dataset=expert_source(spec, paths, seed)[0], expert_episodes=len(episodes))
        actor, metrics["bc_train_mse"] = train_bc(episodes, spec.bc, seed=seed)
    elif spec.irl_metric(method):
        timer.start("learn")
        reward = learned_irl_reward(spec, paths, spec.irl_metric(method), seed, net, base_dir, diffuser)
        metrics.update(expert_fit(spec, paths, diffuser, reward, spec.irl.guidance, seed))
    elif method == "rrf":
        timer.start("learn")
        reward, fit = learned_relative_reward(spec, paths, seed, net, base_dir, diffuser)
        metrics.update(fit)
    elif method in (*ADVERSARIAL, "airl_guided"):
        from rrf_ray.irl.adversarial import PolicyActor, WindowRewardOfStates, load_adversarial

        kind = "airl" if method == "airl_guided" else method
        learned = load_adversarial(paths.artifacts.require("policies", learned_key(spec, kind, seed),
                                                           f"{kind.upper()} of seed {seed} (stage 4)"))
        metrics.update(learned.metrics, expert_dataset=expert_source(spec, paths, seed)[0])
        if method != "airl_guided":
            actor = PolicyActor(learned.policy)  # the thesis: the adversarial methods' own policies
        if kind == "airl":  # AIRL's learned reward g(s): ERC and heatmap (and the guide of airl_guided)
            reward = WindowRewardOfStates(learned.reward, diffuser.normalizer, diffuser.model.action_dim)
    else:
        raise ValueError(f"unknown method {method!r}")
    if reward is not None:
        metrics.update(expert_dataset=expert_source(spec, paths, seed)[0])

    def behaviour_at(scale: float | None):
        timer.start("rollouts")
        me = actor if actor is not None else DiffuserActor(diffuser, reward, spec.guidance_for(method, scale),
                                                           seed=seed)
        return evaluate_behaviour(me, true_reward, spec.evaluation, seed)

    if rule == "selected":
        # The scale from the selection-only experts alone: the true reward and the report rollouts play no part;
        # the report rollouts then run once, at the chosen scale.
        timer.start("selection")
        distance, facts = selection_criterion(spec, paths, method, seed, diffuser, reward)
        selection, behaviour = select_then_evaluate(candidates, distance, behaviour_at)
        metrics.update(selection.metrics(), **facts, guidance_scale=selection.chosen)
    else:
        behaviour = behaviour_at(None)
        if rule != "none":
            metrics["guidance_scale"] = guidance.scale
    metrics.update(behaviour.summary())
    np.savez_compressed(out / "rollouts.npz", observations=behaviour.rollouts.observations.astype(np.float32),
                        starts=behaviour.rollouts.starts, returns=behaviour.returns)
    if reward is not None and spec.scores_reward(method):  # airl_guided's reward is AIRL's: scored under airl
        timer.start("erc")
        held = base_windows(spec, paths, seed, "heldout", diffuser.normalizer)
        quality = evaluate_reward(reward, true_reward, held, spec.evaluation.erc_windows, seed)
        metrics["erc"] = quality.erc
        metrics["erc_windows"] = len(quality.learned)
        if spec.per_step(method, net):
            timer.start("epic")
            metrics.update(reward_distances(reward, diffuser.normalizer, diffuser.model.action_dim, true_reward, held,
                                            spec.evaluation.erc_windows, seed))
        save_reward_heatmap(quality, spec.maze(), out / "heatmap.png",
                            f"{method} ({net} net) seed {seed}: learned reward, ERC {quality.erc:.3f}")
    return {**metrics, **timer.stop()}


def learned_irl_reward(spec: IRLExperimentSpec, paths: SweepPaths, metric: str, seed: int, net: str, base_dir,
                       diffuser):
    """Algorithm 4's reward for `metric` at `net` (trained now, or the finished artifact), on the training
    demonstrations only."""
    from rrf_ray.irl.experts import cut_segments
    from rrf_ray.irl.reward_learning import load_irl_reward, train_irl_reward

    key = learned_key(spec, f"irl_{metric}", seed, net)

    def learn(directory: Path) -> None:
        segments = cut_segments(expert_episodes(spec, paths, seed), spec.irl.segment_steps, spec.windows.stride,
                                diffuser.normalizer)
        copy_checkpoint(train_irl_reward(segments, base_dir, spec.irl_spec(net), metric, spec.resources, paths.train,
                                         f"irl-{metric}-{net}-{key}", seed=seed, callbacks=tune_report_callbacks()),
                        directory)

    return load_irl_reward(paths.artifacts.ensure("rewards", key, learn))


def expert_fit(spec: IRLExperimentSpec, paths: SweepPaths, diffuser, reward, guidance, seed: int) -> dict:
    """How close the learned reward's guided plans (at its training guidance) come to the training expert
    segments, against the unguided base's (same noise): a check that learning moved the plans."""
    from rrf_ray.irl.experts import cut_segments
    from rrf_ray.irl.reward_learning import segment_mse

    episodes = expert_episodes(spec, paths, seed)
    segments = cut_segments(episodes, spec.irl.segment_steps, spec.windows.stride, diffuser.normalizer)
    guided, unguided = segment_mse(diffuser.model, segments, reward, guidance, spec.irl.segment_steps,
                                   spec.irl.compare_dims, seed)
    return {"segment_mse_guided": guided, "segment_mse_unguided": unguided, "expert_episodes": len(episodes)}


def learned_relative_reward(spec: IRLExperimentSpec, paths: SweepPaths, seed: int, net: str, base_dir, diffuser):
    """The relative reward at `net`: the seed's expert diffuser and triples (stage 4), then the alignment."""
    from rrf_ray.rrf.extract import extract_reward
    from rrf_ray.rrf.reward_nets import load_reward

    ekey = rrf_expert_key(spec, seed)
    paths.artifacts.require("diffusers", ekey, "the relative reward's expert diffuser")
    extraction = extract_reward(paths, base_key(spec, seed), ekey, rrf_windows(spec, paths, seed, diffuser.normalizer),
                                spec.rrf.pregen, spec.rrf_reward(net), spec.resources, seed, f"irl-rrf-reward-{net}",
                                callbacks=tune_report_callbacks())
    return load_reward(extraction.path), extraction.summary()


# -- the sweep -------------------------------------------------------------------------------

def run_sweep(spec: IRLExperimentSpec, storage: SweepStorage, resume: bool = False, address: str | None = None) -> Path:
    from ray import tune

    from rrf_ray.engine.ray_runtime import init_ray, quiet_ray_data
    from rrf_ray.irl.report import write_report

    check_user_experts(spec)
    if adversarial_methods(spec):  # before any work: a missing library is the user's to install
        from rrf_ray.irl.adversarial import require_imitation

        require_imitation()
    paths = SweepPaths(storage)
    write_sweep_files(storage, {"spec.json": spec.model_dump_json(indent=1),
                                "trials.json": json.dumps(trial_table(spec), indent=1)})
    init_ray(address, num_cpus=spec.resources.num_cpus or (os.cpu_count() or 1) + 1)
    quiet_ray_data()

    print(f"[sweep] stage 1/6: base data of seeds {spec.seeds} -> {paths.datasets}", flush=True)
    for seed in spec.seeds:
        make_base_dataset(spec, paths, seed)
    print("[sweep] stage 2/6: base diffusers", flush=True)
    grid = run_stage(STAGE_BASE, train_base, {"seed": tune.grid_search(list(spec.seeds))}, spec, storage, resume,
                     ["step", "loss"])
    raise_if_any_failed(grid, "base diffuser")
    print("[sweep] stage 3/6: expert demonstrations (training and selection-only)", flush=True)
    make_experts(spec, paths)
    if "rrf" in spec.active_methods:
        print("[sweep] stage 4/6: the relative reward's expert diffusers and triples", flush=True)
        grid = run_stage(STAGE_RRF, prepare_rrf, {"seed": tune.grid_search(list(spec.seeds))}, spec, storage, resume,
                         ["step", "loss"])
        raise_if_any_failed(grid, "relative reward expert diffuser")
    adversarial = adversarial_methods(spec)
    if adversarial:
        print(f"[sweep] stage 4/6: {' and '.join(k.upper() for k in adversarial)} (imitation, PPO generator)",
              flush=True)
        grid = run_stage(STAGE_ADVERSARIAL, train_adversarial_trial,
                         {"job": tune.grid_search([{"kind": k, "seed": s} for k in adversarial for s in spec.seeds])},
                         spec, storage, resume, ["done"])
        raise_if_any_failed(grid, "adversarial imitation")
    trials = trial_table(spec)
    print(f"[sweep] stage 5/6: {len(trials)} method trials", flush=True)
    # The methods that learn through the reverse chain first: the longest trials start earliest.
    order = sorted(trials, key=lambda t: (not spec.irl_metric(t["method"]), t["method"] != "rrf"))
    space = {"trial": tune.grid_search([{"method": t["method"], "net": t["net"], "seed": t["seed"]} for t in order])}
    run_stage(STAGE_METHODS, run_trial, space, spec, storage, resume,
              ["step", "loss", "return_mean", "erc"])
    print("[sweep] stage 6/6: report", flush=True)
    storage.pull("trials", refresh=True)
    report = write_report(storage.local)
    for name in ("report.md", "report.html", "results.csv", "figures"):
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
    per_rollout = e.segments_per_rollout(spec.windows.stride, irl.segment_steps)
    n_segments = len(e.starts) * e.rollouts_per_start * per_rollout if e.dataset is None else None
    batch = min(irl.batch_size, n_segments) if n_segments else irl.batch_size
    experts = (f"the local Minari dataset {e.dataset!r} (its last {e.n_selection_episodes()} episodes "
               "selection-only)" if e.dataset else
               f"per seed, {len(e.starts)} starts x {e.rollouts_per_start} rollouts x {e.steps} steps of the base "
               f"guided by the true reward ({n_segments} segments of K = {irl.segment_steps}; noise seed "
               f"{e.seed} + seed), and {len(e.starts)} x {e.selection_rollouts_per_start} selection-only rollouts "
               f"({len(e.starts) * e.selection_rollouts_per_start * per_rollout} segments; noise seed "
               f"{e.selection_seed} + seed) that no method trains on")
    lines = [
        f"sweep {spec.name}: IRL on {spec.maze_name}, true reward {spec.true_reward.offset:g} + "
        f"{spec.true_reward.weights[0]:g} x + {spec.true_reward.weights[1]:g} y; seeds {spec.seeds}, each a whole "
        "run (own base data, base diffuser, experts, learned parts, rollouts)",
        f"stage 1 base data: {spec.data.base_transitions:,} transitions per seed (data seed {spec.data_seed} + seed)",
        f"stage 2 base diffusers: {len(spec.seeds)} x H {spec.windows.horizon} (stride {spec.windows.stride}), T "
        f"{spec.diffusion.n_timesteps}, {spec.diffusion.train_steps:,} steps",
        f"stage 3 experts: {experts}",
        "stage 4 relative reward: " + (f"{len(spec.seeds)} expert diffuser(s) "
                                      f"{spec.rrf.expert.describe(spec.diffusion)}, triples by "
                                      f"{spec.rrf.pregen.describe()}" if "rrf" in spec.active_methods else "not run"),
        "stage 4 adversarial: " + (f"{', '.join(k.upper() for k in adversarial_methods(spec))} x seeds "
                                   f"{spec.seeds} (imitation), {spec.adversarial.total_timesteps:,} PPO steps each "
                                   f"in {spec.adversarial.n_envs} PointMazes of {spec.experts.steps} steps"
                                   if adversarial_methods(spec) else "not run"),
        f"stage 5 methods: {len(trials)} trials ({', '.join(spec.active_methods)}; nets {spec.nets} for the "
        f"reward-learning methods; seeds {spec.seeds}); Algorithm 4: {irl.epochs} epochs, batch {batch}, "
        f"{irl.backprop_steps or spec.diffusion.n_timesteps} differentiable steps; evaluation: {len(v.starts)} "
        f"starts x {v.rollouts_per_start} rollouts x {v.steps} steps (environment seed {v.seed} + seed), ERC on "
        f"{v.erc_windows} held-out base windows",
    ]
    for net in spec.nets:
        memory = estimate_backprop_memory(model, build_irl_reward(spec.irl_spec(net), spec.windows.horizon,
                                                                  transition_dim), irl.guidance, batch,
                                          irl.backprop_steps)
        lines.append(f"  {net} net: {memory.describe()}")
    lines += ["guidance scales:"] + [f"  {m}: {spec.describe_scale(m)}" for m in spec.active_methods]
    lines += ["stage 6 report: report.md (protocol card first), results.csv, figures/",
              "", f"{'trial':<28} {'method':<16} {'net':<7} {'seed':>4}"]
    lines += [f"{t['trial_id']:<28} {t['method']:<16} {t['net'] or '-':<7} {t['seed']:>4}" for t in trials]
    n_irl = sum(spec.irl_metric(t["method"]) is not None for t in trials)
    per_epoch = math.ceil(n_segments / batch) if n_segments else 1
    hours, rate_lines = spec.estimate.hours({
        "diffuser_samples_per_s": len(spec.seeds) * spec.diffusion.train_steps * spec.diffusion.batch_size,
        "irl_steps_per_s": n_irl * irl.epochs * per_epoch})
    lines += ["", f"estimated training time: {hours:,.1f} {'GPU' if spec.resources.use_gpu else 'CPU-worker'}-hours "
              f"(experts and evaluation rollouts not included{'' if n_segments else '; one batch per epoch assumed'}):"]
    return "\n".join(lines + rate_lines)
