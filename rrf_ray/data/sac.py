"""D4RL-style MuJoCo locomotion datasets made here: SAC's replay, a medium and an expert policy's rollouts.

D4RL made its locomotion data by training SAC online: *medium-replay* is every transition the
agent saw until its policy reached the "medium" return, *medium* and *expert* are rollouts of
that early-stopped policy and of the final one. D4RL's files cannot be fetched here, so
`python -m rrf_ray.data sac ENV_ID --steps N` does the same with stable-baselines3's SAC (the
optional extra `rl`) on a gymnasium MuJoCo environment, one Ray task per environment.

Every transition is real: a recording wrapper stores what the environment returned, with the
simulator state (qpos, qvel, as D4RL's `infos/`) of every observation, so an episode can be
re-simulated from its start state. Training checkpoints (SB3 model, replay buffer, the
episodes seen so far, the policy at each checkpoint) are written atomically beside the
datasets; a rerun with the same settings reuses them, an interrupted one resumes from the last
(the episode in progress then restarts). Datasets are written atomically (data.minari_io).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rrf_ray.data.minari_io import DatasetError, dataset_dir, datasets_root, read_metadata, write_dataset

KINDS = ("replay", "medium", "expert")
METADATA_KEY = "rrf_sac"
DONE_FILE = "DONE.json"
MEDIUM_FRACTION = 1 / 3  # D4RL: "a policy trained to approximately 1/3 the performance of the expert"
# (measured, as D4RL's normalised scores are, from a random policy's return up to the final policy's)


@dataclass(frozen=True)
class SACSettings:
    """What a SAC run is made of: the same settings give the same policies (and reuse them)."""

    env_id: str
    steps: int
    seed: int = 0
    episode_steps: int | None = None  # the environment's own limit (1000 for MuJoCo v5) unless set
    checkpoint_every: int | None = None  # default: steps / 20, a multiple of the episode length
    eval_episodes: int = 3
    learning_starts: int | None = None  # default: min(10000, steps / 10) random-action steps first
    batch_size: int = 256
    learning_rate: float = 3e-4
    net_arch: tuple[int, ...] = (256, 256)
    gamma: float = 0.99
    tau: float = 0.005

    def resolved(self) -> SACSettings:
        """The settings with every default filled in from the environment and the step count."""
        import gymnasium as gym

        episode = self.episode_steps
        if episode is None:
            spec = gym.spec(self.env_id)
            episode = int(spec.max_episode_steps or 1000)
        every = self.checkpoint_every or max(episode, round(self.steps / 20 / episode) * episode)
        starts = self.learning_starts if self.learning_starts is not None else min(10_000, self.steps // 10)
        return SACSettings(**{**asdict(self), "episode_steps": episode, "checkpoint_every": every,
                              "learning_starts": starts, "net_arch": tuple(self.net_arch)})


@dataclass(frozen=True)
class DatasetSettings:
    """How the three datasets are cut from a SAC run: these change the data, not the policies."""

    medium_return: float | None = None  # default: MEDIUM_FRACTION of the way from random to the final policy
    episodes: int = 100  # rollouts of the medium and of the expert policy


def env_name(env_id: str) -> str:
    """'HalfCheetah-v5' -> 'halfcheetah' (D4RL's spelling)."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1]).lower()


def dataset_id(env_id: str, kind: str) -> str:
    return f"rrf/{env_name(env_id)}-sac-{kind}-v0"


def policies_dir(env_id: str, seed: int, root=None) -> Path:
    """Where a run's checkpoints live: beside its datasets, under the same Minari root."""
    return datasets_root(root) / "rrf" / f"{env_name(env_id)}-sac-policies" / f"seed-{seed}"


# -- recording what the agent saw ---------------------------------------------------------------


@dataclass
class Episode:
    """One episode as the environment returned it (L actions, L + 1 observations and states)."""

    observations: list = field(default_factory=list)
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    qpos: list = field(default_factory=list)
    qvel: list = field(default_factory=list)
    terminated: bool = False
    truncated: bool = False
    seed: int | None = None
    policy_step: int = 0  # the agent's step count when the episode ended

    def arrays(self) -> dict[str, np.ndarray]:
        return {"observations": np.asarray(self.observations, np.float64),
                "actions": np.asarray(self.actions, np.float32), "rewards": np.asarray(self.rewards, np.float64),
                "qpos": np.asarray(self.qpos, np.float64), "qvel": np.asarray(self.qvel, np.float64)}

    @property
    def total_return(self) -> float:
        return float(np.sum(self.rewards))


def recording(env_id: str, episode_steps: int, seed: int):
    """`env_id` with a wrapper that records every finished episode (`.episodes`) and its states."""
    import gymnasium as gym

    class Recorder(gym.Wrapper):
        def __init__(self, env):
            super().__init__(env)
            self.episodes: list[Episode] = []
            self.current: Episode | None = None
            self.steps = 0
            self.next_seed = seed * 1_000_003

        def _state(self, obs, ep: Episode) -> None:
            data = self.env.unwrapped.data
            ep.observations.append(np.array(obs, np.float64))
            ep.qpos.append(data.qpos.copy())
            ep.qvel.append(data.qvel.copy())

        def reset(self, *, seed=None, options=None):
            seed = self.next_seed if seed is None else seed  # every episode's start is reproducible
            self.next_seed = seed + 1
            obs, info = self.env.reset(seed=seed, options=options)
            self.current = Episode(seed=seed)
            self._state(obs, self.current)
            return obs, info

        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            self.steps += 1
            ep = self.current
            ep.actions.append(np.array(action, np.float32))
            ep.rewards.append(float(reward))
            self._state(obs, ep)
            if terminated or truncated:
                ep.terminated, ep.truncated, ep.policy_step = bool(terminated), bool(truncated), self.steps
                self.episodes.append(ep)
                self.current = None
            return obs, reward, terminated, truncated, info

    return Recorder(gym.make(env_id, max_episode_steps=episode_steps))


def save_episodes(path: Path, episodes: list[Episode]) -> None:
    """Episodes as one .npz (atomically): flat arrays with each episode's length and flags."""
    arrays = [e.arrays() for e in episodes]
    flat = {k: np.concatenate([a[k] for a in arrays]) if arrays else np.zeros(0) for k in
            ("observations", "actions", "rewards", "qpos", "qvel")}
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.npz")
    np.savez(tmp, lengths=np.array([len(e.actions) for e in episodes], np.int64),
             terminated=np.array([e.terminated for e in episodes], bool),
             truncated=np.array([e.truncated for e in episodes], bool),
             seeds=np.array([e.seed for e in episodes], np.int64),
             policy_steps=np.array([e.policy_step for e in episodes], np.int64), **flat)
    os.replace(tmp, path)


def load_episodes(path: Path) -> list[Episode]:
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    out, o, a = [], 0, 0
    for i, n in enumerate(data["lengths"]):
        n = int(n)
        out.append(Episode(observations=list(data["observations"][o:o + n + 1]), actions=list(data["actions"][a:a + n]),
                           rewards=list(data["rewards"][a:a + n]), qpos=list(data["qpos"][o:o + n + 1]),
                           qvel=list(data["qvel"][o:o + n + 1]), terminated=bool(data["terminated"][i]),
                           truncated=bool(data["truncated"][i]), seed=int(data["seeds"][i]),
                           policy_step=int(data["policy_steps"][i])))
        o, a = o + n + 1, a + n
    return out


# -- training, checkpointed ---------------------------------------------------------------------


def write_json(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def evaluate(policy, env_id: str, episode_steps: int, episodes: int, seed: int) -> float:
    """Mean return of the policy's deterministic actions over `episodes` seeded episodes
    (policy None: uniformly random actions, the bottom of D4RL's normalised score)."""
    import gymnasium as gym

    env = gym.make(env_id, max_episode_steps=episode_steps)
    env.action_space.seed(seed)
    total = 0.0
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            done = False
            while not done:
                action = env.action_space.sample() if policy is None else policy.predict(obs, deterministic=True)[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
    finally:
        env.close()
    return total / episodes


def train_sac(settings: SACSettings, root=None, threads: int = 1, progress: bool = True) -> dict:
    """Train SAC with checkpoints in `policies_dir`, resuming from the last one; return the record
    {"settings", "checkpoints": [{"step", "eval_return", "policy"}], "final_step"}."""
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger

    s = settings.resolved()
    torch.set_num_threads(threads)
    out = policies_dir(s.env_id, s.seed, root)
    out.mkdir(parents=True, exist_ok=True)
    done_file = out / DONE_FILE
    settings_json = json.loads(json.dumps(asdict(s)))
    if done_file.exists():
        record = json.loads(done_file.read_text())
        if record["settings"] == settings_json:
            return record
        raise DatasetError(f"{out} holds SAC policies trained with other settings ({record['settings']}); "
                           "pass --overwrite to retrain, or choose another --root")
    progress_file = out / "progress.json"
    record = json.loads(progress_file.read_text()) if progress_file.exists() else None
    if record is not None and record["settings"] != settings_json:
        raise DatasetError(f"{out} holds an unfinished SAC run with other settings; pass --overwrite to restart it")

    env = recording(s.env_id, s.episode_steps, s.seed)
    bar = make_bar(progress, s.steps, f"SAC {s.env_id} seed {s.seed}")
    if record is None:
        random_return = evaluate(None, s.env_id, s.episode_steps, s.eval_episodes, seed=10_000 + s.seed)
        record = {"settings": settings_json, "random_return": random_return, "checkpoints": [], "episode_files": []}
        model = SAC("MlpPolicy", env, learning_rate=s.learning_rate, buffer_size=max(s.steps, 1),
                    learning_starts=s.learning_starts, batch_size=s.batch_size, tau=s.tau, gamma=s.gamma,
                    policy_kwargs={"net_arch": list(s.net_arch)}, seed=s.seed, device="cpu", verbose=0)
    else:  # resume: the model, its replay buffer, then the episodes (the one in progress restarts)
        model = SAC.load(out / "state" / "model.zip", env=env, device="cpu")
        model.load_replay_buffer(out / "state" / "replay_buffer.pkl")
        env.steps = model.num_timesteps
        env.next_seed = s.seed * 1_000_003 + 100_000 + model.num_timesteps  # fresh starts after the resume
        print(f"[sac] {s.env_id} seed {s.seed}: resuming at step {model.num_timesteps} from {out}", flush=True)
        bar.update(model.num_timesteps)
    model.set_logger(Logger(None, []))  # SB3's default logger makes a /tmp/SB3-<date> folder per learn() call

    class Progress(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % 250 == 0:
                bar.update(250)
                if env.episodes:
                    bar.set_description(f"SAC {s.env_id} seed {s.seed}: return {env.episodes[-1].total_return:.0f}")
            return True

    callback = Progress()
    while model.num_timesteps < s.steps:
        start = time.time()
        target = min(s.steps, (model.num_timesteps // s.checkpoint_every + 1) * s.checkpoint_every)
        model.learn(target - model.num_timesteps, reset_num_timesteps=False, callback=callback, progress_bar=False)
        step = model.num_timesteps
        if not all(math.isfinite(float(p.detach().abs().sum())) for p in model.policy.parameters()):
            raise FloatingPointError(f"SAC {s.env_id} seed {s.seed}: non-finite policy weights at step {step}")
        policy_path = out / f"policy-{step:09d}.zip"
        tmp = out / f".policy-{uuid.uuid4().hex[:8]}.zip"
        model.policy.save(tmp)
        os.replace(tmp, policy_path)
        episodes_path = out / f"episodes-{step:09d}.npz"
        save_episodes(episodes_path, env.episodes)
        env.episodes = []
        eval_return = evaluate(model.policy, s.env_id, s.episode_steps, s.eval_episodes, seed=10_000 + s.seed)
        save_state(model, out / "state")
        record["checkpoints"].append({"step": step, "eval_return": eval_return, "policy": policy_path.name})
        record["episode_files"].append(episodes_path.name)
        write_json(progress_file, record)
        print(f"[sac] {s.env_id} seed {s.seed}: step {step}/{s.steps}, evaluation return {eval_return:.1f} "
              f"({(time.time() - start):.0f} s)", flush=True)
    bar.close()
    env.close()
    record["final_step"] = model.num_timesteps
    write_json(done_file, record)
    shutil.rmtree(out / "state", ignore_errors=True)  # the policies and episodes are what is kept
    progress_file.unlink(missing_ok=True)
    return record


def save_state(model, state: Path) -> None:
    """The model and its replay buffer, replacing the previous state only once both are written."""
    tmp = state.with_name(f".state-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    model.save(tmp / "model.zip")
    model.save_replay_buffer(tmp / "replay_buffer.pkl")
    old = state.with_name(f".old-state-{uuid.uuid4().hex[:8]}")
    if state.exists():
        os.replace(state, old)
    os.replace(tmp, state)
    shutil.rmtree(old, ignore_errors=True)


def make_bar(progress: bool, total: int, desc: str):
    """A progress bar that reaches the driver's console from inside a Ray task (or a no-op one)."""
    if not progress:
        class NoBar:
            def update(self, n=1): ...
            def set_description(self, d): ...
            def close(self): ...
        return NoBar()
    from ray.experimental.tqdm_ray import tqdm

    return tqdm(total=total, desc=desc, unit="steps")


# -- the datasets -------------------------------------------------------------------------------


def rollouts(policy_file: Path, env_id: str, episode_steps: int, episodes: int, seed: int, policy_step: int,
             stochastic: bool = True) -> list[Episode]:
    """`episodes` recorded episodes of a saved policy (its sampled actions, as D4RL's data)."""
    from stable_baselines3.sac.policies import SACPolicy

    policy = SACPolicy.load(policy_file, device="cpu")
    env = recording(env_id, episode_steps, seed)
    try:
        for _ in range(episodes):
            obs, _ = env.reset()
            done = False
            while not done:
                action, _ = policy.predict(obs, deterministic=not stochastic)
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
    finally:
        env.close()
    for ep in env.episodes:
        ep.policy_step = policy_step
    return env.episodes


def medium_checkpoint(record: dict, medium_return: float | None) -> tuple[dict, float]:
    """The first checkpoint whose evaluation return reaches the medium return, and that return."""
    checkpoints = record["checkpoints"]
    low, high = record["random_return"], checkpoints[-1]["eval_return"]
    threshold = medium_return if medium_return is not None else low + MEDIUM_FRACTION * (high - low)
    for c in checkpoints:
        if c["eval_return"] >= threshold:
            return c, threshold
    best = max(c["eval_return"] for c in checkpoints)
    raise DatasetError(f"no SAC checkpoint reached the medium return {threshold:g} (best evaluation return "
                       f"{best:.1f}): lower --medium-return or train for more --steps")


def write_sac_dataset(did: str, episodes: list[Episode], env_id: str, episode_steps: int, root, meta: dict,
                      description: str) -> None:
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    buffers = []
    for i, e in enumerate(episodes):
        a = e.arrays()
        n = len(a["actions"])
        buffers.append(EpisodeBuffer(id=i, seed=e.seed, observations=a["observations"], actions=a["actions"],
                                     rewards=a["rewards"],
                                     terminations=np.r_[np.zeros(n - 1, bool), e.terminated],
                                     truncations=np.r_[np.zeros(n - 1, bool), e.truncated and not e.terminated],
                                     infos={"qpos": a["qpos"], "qvel": a["qvel"]}))
    env = gym.make(env_id, max_episode_steps=episode_steps)
    try:
        write_dataset(did, buffers, env, root, metadata={METADATA_KEY: meta},
                      algorithm_name="stable-baselines3 SAC (rrf_ray, D4RL procedure)", description=description)
    finally:
        env.close()


def build_datasets(record: dict, data: DatasetSettings, root=None) -> dict[str, str]:
    """The replay, medium and expert datasets of a finished SAC run (reused if already built alike)."""
    s = SACSettings(**{**record["settings"], "net_arch": tuple(record["settings"]["net_arch"])})
    out = policies_dir(s.env_id, s.seed, root)
    medium, threshold = medium_checkpoint(record, data.medium_return)
    final = record["checkpoints"][-1]
    source = {"sac": record["settings"], "dataset": asdict(data), "medium_step": medium["step"],
              "final_step": final["step"]}
    ids = {kind: dataset_id(s.env_id, kind) for kind in KINDS}
    if all((read_metadata(did, root) or {}).get(METADATA_KEY, {}).get("source") == source for did in ids.values()):
        return ids
    seen = [e for f in record["episode_files"] for e in load_episodes(out / f) if e.policy_step <= medium["step"]]
    evaluations = [[c["step"], c["eval_return"]] for c in record["checkpoints"]]
    common = {"source": source, "env_id": s.env_id, "medium_return": threshold, "evaluations": evaluations,
              "random_return": record["random_return"]}
    write_sac_dataset(ids["replay"], seen, s.env_id, s.episode_steps, root,
                      {**common, "kind": "replay", "returns": [e.total_return for e in seen],
                       "policy_steps": [e.policy_step for e in seen]},
                      f"SAC replay on {s.env_id} (seed {s.seed}): every transition of its first "
                      f"{medium['step']} steps, until its policy reached the medium return {threshold:.1f} "
                      "(D4RL's medium-replay).")
    for kind, checkpoint in (("medium", medium), ("expert", final)):
        eps = rollouts(out / checkpoint["policy"], s.env_id, s.episode_steps, data.episodes,
                       seed=s.seed * 1_000_003 + (500_000 if kind == "medium" else 700_000),
                       policy_step=checkpoint["step"])
        write_sac_dataset(ids[kind], eps, s.env_id, s.episode_steps, root,
                          {**common, "kind": kind, "returns": [e.total_return for e in eps],
                           "policy_step": checkpoint["step"], "policy_eval_return": checkpoint["eval_return"]},
                          f"{data.episodes} rollouts of SAC's {kind} policy on {s.env_id} (seed {s.seed}, step "
                          f"{checkpoint['step']}, sampled actions).")
    return ids


CURVE_FILE = "learning_curve.png"


def plot_learning_curve(record: dict, summary: dict, path: Path) -> Path:
    """SAC's evaluation return by step, with the random policy's return, the medium threshold (the
    replay set is every transition before it was reached) and the three datasets' mean returns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rrf_ray.engine.report import save_figure_atomic

    steps = [c["step"] for c in record["checkpoints"]]
    returns = [c["eval_return"] for c in record["checkpoints"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(steps, returns, "o-", color="black", ms=3, label=f"evaluation ({record['settings']['eval_episodes']} "
            "episodes, mean action)")
    ax.axhline(record["random_return"], color="grey", ls=":", label=f"random policy {record['random_return']:.0f}")
    ax.axhline(summary["medium_return"], color="tab:orange", ls="--",
               label=f"medium threshold {summary['medium_return']:.0f} (reached at step {summary['medium_step']})")
    for i, (kind, color) in enumerate(zip(KINDS, ("tab:blue", "tab:orange", "tab:green"))):
        k = summary[kind]
        ax.errorbar(steps[-1] * (1.03 + 0.03 * i), k["mean_return"],
                    yerr=k["std_return"], fmt="s", color=color, capsize=3,
                    label=f"{kind} data: {k['mean_return']:.0f} ± {k['std_return']:.0f} ({k['episodes']} episodes)")
    ax.set_xlabel("SAC environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(f"SAC on {record['settings']['env_id']}, seed {record['settings']['seed']}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    try:
        return save_figure_atomic(fig, path)
    finally:
        plt.close(fig)


def make_sac_datasets(settings: SACSettings, data: DatasetSettings, root=None, threads: int = 1,
                      progress: bool = True, overwrite: bool = False) -> dict:
    """Train (or reuse, or resume) SAC, then build its three datasets; a summary for the CLI."""
    s = settings.resolved()
    out = policies_dir(s.env_id, s.seed, root)
    if overwrite:
        shutil.rmtree(out, ignore_errors=True)
    elif not (out / DONE_FILE).exists() and not (out / "progress.json").exists():
        taken = [dataset_id(s.env_id, k) for k in KINDS if dataset_dir(dataset_id(s.env_id, k), root).exists()]
        if taken:
            raise DatasetError(f"{', '.join(taken)} already exist under {datasets_root(root)} but were not made by "
                               f"this SAC run ({out} is empty); pass --overwrite to replace them")
    record = train_sac(s, root, threads=threads, progress=progress)
    ids = build_datasets(record, data, root)
    summary = {"env_id": s.env_id, "seed": s.seed, "datasets": ids, "policies": str(out),
               "random_return": round(record["random_return"], 1),
               "evaluations": [[c["step"], round(c["eval_return"], 1)] for c in record["checkpoints"]]}
    for kind, did in ids.items():
        returns = np.asarray(read_metadata(did, root)[METADATA_KEY]["returns"])
        summary[kind] = {"episodes": len(returns), "mean_return": float(returns.mean()),
                         "std_return": float(returns.std())}
    medium, summary["medium_return"] = medium_checkpoint(record, data.medium_return)  # as build_datasets chose
    summary["medium_step"] = medium["step"]
    summary["learning_curve"] = str(plot_learning_curve(record, summary, out / CURVE_FILE))
    return summary
