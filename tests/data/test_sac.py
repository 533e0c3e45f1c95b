"""`python -m rrf_ray.data sac`: SAC on real MuJoCo, D4RL-style datasets read back with Minari."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from rrf_ray.data.sac import (Episode, dataset_id, env_name, load_episodes, medium_checkpoint, policies_dir,  # noqa: E402
                              save_episodes)

ENV = "Hopper-v5"  # falls end its episodes: variable lengths, both end flags


def sac_command(root, *extra):
    return [sys.executable, "-m", "rrf_ray.data", "sac", ENV, "--steps", "2000", "--episode-steps", "100",
            "--checkpoint-every", "1000", "--episodes", "3", "--root", str(root), "--no-progress", *extra]


def resimulate(episode, env) -> tuple[np.ndarray, np.ndarray]:
    """Observations and rewards of `episode`'s actions replayed from its stored start state."""
    env.reset(seed=0)
    env.unwrapped.set_state(episode.infos["qpos"][0], episode.infos["qvel"][0])
    obs, rewards = [env.unwrapped._get_obs()], []
    for action in episode.actions:
        o, r, *_ = env.step(action)
        obs.append(o)
        rewards.append(r)
    return np.asarray(obs), np.asarray(rewards)


@pytest.mark.slow
def test_sac_makes_real_replay_medium_and_expert_datasets_ending_at_falls_and_resumes(tmp_path):
    """Hopper-v5 ends an episode when the robot falls (and at 100 steps here): episodes of varying length,
    each ending by exactly one of the two, replayable in the simulator, windows never crossing an end."""
    from rrf_ray.data.windows import load_windows

    root = tmp_path / "minari"
    env_vars = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env_vars.pop("MINARI_DATASETS_PATH", None)
    env_vars.pop("RAY_ADDRESS", None)

    # Interrupted after its first checkpoint (the driver and its private Ray killed) ...
    first = subprocess.Popen(sac_command(root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env_vars, start_new_session=True)
    seen, deadline = [], time.time() + 600
    for line in first.stdout:
        seen.append(line)
        if "step 1000/2000" in line or time.time() > deadline:
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert any("step 1000/2000" in line for line in seen), "".join(seen[-30:])

    # ... the same command resumes from that checkpoint and finishes.
    run = subprocess.run(sac_command(root), capture_output=True, text=True, env=env_vars, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "resuming at step 1000" in run.stdout + run.stderr
    assert "step 1000/2000" not in run.stdout + run.stderr
    curve = Path(run.stdout.split("learning curve: ")[1].split()[0])  # the figure the run says it drew
    assert curve.parent == policies_dir(ENV, 0, root) and curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    import minari

    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        sets = {kind: minari.load_dataset(dataset_id(ENV, kind)) for kind in ("replay", "medium", "expert")}
        g = gym.make(ENV, max_episode_steps=100)
        hopper = g.unwrapped
        falls = 0
        for kind, ds in sets.items():
            meta = ds.storage.metadata["rrf_sac"]
            episodes = list(ds.iterate_episodes())
            assert len(episodes) == len(meta["returns"]) > 0
            for ep, stored_return in zip(episodes, meta["returns"]):
                n = len(ep.actions)
                assert len(ep.observations) == n + 1 and ep.rewards.sum() == pytest.approx(stored_return)
                # ended by exactly one of falling or the time limit, at its last step only
                assert ep.terminations[-1] != ep.truncations[-1], kind
                assert not ep.terminations[:-1].any() and not ep.truncations[:-1].any()
                assert ep.truncations[-1] == (n == 100)
                healthy = []
                for qpos, qvel in zip(ep.infos["qpos"], ep.infos["qvel"]):
                    hopper.set_state(qpos, qvel)
                    healthy.append(bool(hopper.is_healthy))
                # a fall is the first unhealthy state; every earlier one was healthy
                assert all(healthy[:-1]) and healthy[-1] == (not ep.terminations[-1])
                falls += int(ep.terminations[-1])
            # every transition is real: the stored actions, replayed from the stored start state in the
            # simulator, give back the stored observations and rewards
            for ep in (episodes[0], episodes[len(episodes) // 2], episodes[-1]):
                obs, rewards = resimulate(ep, g)
                np.testing.assert_allclose(obs, ep.observations, atol=1e-6)
                np.testing.assert_allclose(rewards, ep.rewards, atol=1e-6)
        assert falls > 0

        replay = sets["replay"].storage.metadata["rrf_sac"]
        medium = sets["medium"].storage.metadata["rrf_sac"]
        expert = sets["expert"].storage.metadata["rrf_sac"]
        lengths = [len(ep.actions) for ep in sets["replay"].iterate_episodes()]
        assert len(set(lengths)) > 1, lengths  # falls end episodes at different steps
        # the replay holds the episodes the agent saw up to the medium policy, in order (the one cut by
        # the kill restarts, so a gap there may exceed its episode's length)
        gaps = np.diff([0, *replay["policy_steps"]])
        assert (gaps >= lengths).all() and (gaps == lengths).mean() > 0.8, (gaps, lengths)
        assert replay["policy_steps"][-1] <= medium["policy_step"]
        assert expert["policy_step"] == 2000
        # SAC learns: its episodes' returns rise over training (the first ones are random actions)
        returns = np.asarray(replay["returns"])
        k = max(1, len(returns) // 3)
        assert returns[-k:].mean() > returns[:k].mean() + 5, returns
        assert expert["random_return"] < expert["evaluations"][-1][1]

        # windows never cross an episode end: each is its own episode's rows, the tail resting at the end
        replay_episodes = {ep.id: ep for ep in sets["replay"].iterate_episodes()}
        for pad_end in (False, True):
            windows = load_windows(dataset_id(ENV, "replay"), horizon=8, split="all", normalizer="standard",
                                   pad_end=pad_end)
            starts = set()
            for i in range(len(windows)):
                ep = replay_episodes[int(windows.episode_of_window[i])]
                obs = windows.normalizer.unnormalize(windows[i])[:, windows.action_dim:]
                start = int(np.flatnonzero(np.all(np.isclose(ep.observations, obs[0], atol=1e-4), axis=1))[0])
                steps = np.minimum(np.arange(start, start + 8), len(ep.observations) - 1)
                np.testing.assert_allclose(obs, ep.observations[steps], atol=1e-4)
                starts.add((ep.id, start))
            if pad_end:  # a window starts at every state of every episode
                assert len(starts) == sum(len(ep.observations) for ep in replay_episodes.values())
    finally:
        del os.environ["MINARI_DATASETS_PATH"]

    # A rerun with the same settings trains nothing and rebuilds nothing.
    datasets = root / "rrf" / f"{env_name(ENV)}-sac-expert-v0"
    stamp = datasets.stat().st_mtime_ns
    again = subprocess.run(sac_command(root), capture_output=True, text=True, env=env_vars, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[sac]" not in again.stdout + again.stderr
    assert datasets.stat().st_mtime_ns == stamp


def test_medium_is_the_first_checkpoint_a_third_of_the_way_from_random_to_final():
    record = {"random_return": -300.0, "checkpoints": [
        {"step": 10, "eval_return": -100.0}, {"step": 20, "eval_return": 150.0},
        {"step": 30, "eval_return": 80.0}, {"step": 40, "eval_return": 600.0}]}
    checkpoint, threshold = medium_checkpoint(record, None)
    assert threshold == pytest.approx(0.0) and checkpoint["step"] == 20
    assert medium_checkpoint(record, 500.0)[0]["step"] == 40
    from rrf_ray.data.minari_io import DatasetError

    with pytest.raises(DatasetError, match="no SAC checkpoint reached the medium return 700"):
        medium_checkpoint(record, 700.0)


def test_episode_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    eps = [Episode(observations=list(rng.normal(size=(n + 1, 3))), actions=list(rng.normal(size=(n, 2))),
                   rewards=list(rng.normal(size=n)), qpos=list(rng.normal(size=(n + 1, 4))),
                   qvel=list(rng.normal(size=(n + 1, 4))), terminated=n == 3, truncated=n != 3, seed=7 + n,
                   policy_step=10 * n) for n in (3, 5)]
    save_episodes(tmp_path / "e.npz", eps)
    back = load_episodes(tmp_path / "e.npz")
    assert [(e.terminated, e.truncated, e.seed, e.policy_step) for e in back] == \
        [(e.terminated, e.truncated, e.seed, e.policy_step) for e in eps]
    for a, b in zip(eps, back):
        for key, value in a.arrays().items():
            np.testing.assert_allclose(b.arrays()[key], value, rtol=1e-6)


def test_bad_arguments_exit_2_naming_them(tmp_path):
    for extra, needle in ((["--steps", "0"], "--steps must be positive"),
                          (["--medium-return", "5"], "single ENV_ID")):
        args = [sys.executable, "-m", "rrf_ray.data", "sac", "HalfCheetah-v5", "Hopper-v5", "--steps", "100", "--root",
                str(tmp_path), *extra]
        run = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and needle in run.stderr, run.stderr
    run = subprocess.run([sys.executable, "-m", "rrf_ray.data", "sac", "NoSuchEnv-v9", "--steps", "10"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "NoSuchEnv-v9" in run.stderr

