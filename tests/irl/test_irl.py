"""The IRL experiment (thesis Algorithm 4 beside the relative reward): its parts, its errors, its sweep end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rrf_ray.data.windows import Normalizer
from rrf_ray.engine.loading import load_spec
from rrf_ray.irl.bc import train_bc
from rrf_ray.irl.experts import cut_segments
from rrf_ray.irl.spec import SELECTED_SCALES, BCSpec
from rrf_ray.irl.stages import learned_key, result_key, trial_table
from rrf_ray.irl.true_reward import LinearMazeReward
from rrf_ray.maze2d.mazes import Maze

UMAZE = Maze("umaze", ("#####", "#OOO#", "###O#", "#OOO#", "#####"), ())


def sweep(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "rrf_ray.sweep", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_true_reward_uses_the_thesis_coordinates_and_its_guide_agrees():
    r = LinearMazeReward(UMAZE, [5.0, 5.0])
    # cell (row, col) centre: x = col + 0.5, y = row + 0.5, origin top-left with walls included
    for row, col in [(1, 1), (1, 3), (3, 1), (3, 3), (2, 3)]:
        assert r(UMAZE.rowcol_to_xy((row, col))) == pytest.approx(5 * (col + 0.5) + 5 * (row + 0.5))
    assert r.best_cell() == (3, 3)  # the bottom-right corner
    assert LinearMazeReward(UMAZE, [-1.0, 0.0]).best_cell() in [(1, 1), (3, 1)]

    # the guide on normalised windows is the same return, differentiable
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(500, 6)).astype(np.float32)
    norm = Normalizer.fit(rows)
    windows = rng.normal(size=(4, 7, 6)).astype(np.float32)
    guide = r.guide(norm, action_dim=2)
    x = torch.from_numpy(norm.normalize(windows).astype(np.float32)).requires_grad_(True)
    value = guide(x, torch.zeros(4, dtype=torch.long))
    expected = r(windows[..., 2:4]).sum(axis=1)
    np.testing.assert_allclose(value.detach().numpy(), expected, rtol=1e-4, atol=1e-3)
    grad, = torch.autograd.grad(value.sum(), x)
    assert torch.all(grad[..., :2] == 0) and torch.all(grad[..., 4:] == 0)  # only the positions count
    np.testing.assert_allclose(grad[0, 0, 2:4].numpy(), r.pointmaze_weights * norm.scale[2:4], rtol=1e-5)
    # a positive multiple of the reward guides the same way (the optimal policy is the same)
    gentle = LinearMazeReward(UMAZE, [1.0, 1.0], offset=3.0).guide(norm, action_dim=2)
    grad2, = torch.autograd.grad(gentle(x, torch.zeros(4, dtype=torch.long)).sum(), x)
    torch.testing.assert_close(grad2, grad)


def test_segments_are_algorithm_5_on_the_base_time_stride():
    obs = np.arange(41 * 4, dtype=np.float64).reshape(41, 4)  # 40 steps
    act = np.arange(40 * 2, dtype=np.float64).reshape(40, 2) + 1000
    k, stride = 3, 4
    segs = cut_segments([(obs, act)], k, stride)
    # per phase p: rows p, p+4, ... (10 each), cut into non-overlapping blocks of 3 -> 3 segments
    assert segs.shape == (4 * 3, k, 6)
    first = segs[0]
    np.testing.assert_array_equal(first[:, 2:], obs[[0, 4, 8]])
    np.testing.assert_array_equal(first[:, :2], act[[0, 4, 8]])
    np.testing.assert_array_equal(segs[1][:, 2:], obs[[12, 16, 20]])  # the next block starts after the last
    starts = {tuple(s[0, 2:]) for s in segs}
    assert len(starts) == len(segs)  # no two segments share a start
    spec = load_spec("irl-tiny")
    e = spec.experts.model_copy(update={"steps": 40})
    assert e.segments_per_rollout(stride, k) == len(segs)
    with pytest.raises(ValueError, match="long enough"):
        cut_segments([(obs[:5], act[:4])], k, stride)


def test_behaviour_cloning_fits_a_known_policy(one_torch_thread):
    rng = np.random.default_rng(0)
    obs = rng.uniform(-1, 1, size=(2001, 4))
    act = np.tanh(obs[:-1, :2] @ np.array([[0.8, -0.3], [0.2, 0.5]]))
    policy, mse = train_bc([(obs, act)], BCSpec(hidden=[64, 64], steps=800), seed=0)
    assert mse < 0.01
    held = rng.uniform(-1, 1, size=(200, 4))
    truth = np.tanh(held[:, :2] @ np.array([[0.8, -0.3], [0.2, 0.5]]))
    assert np.mean((policy(held) - truth) ** 2) < 0.02


def test_keys_and_trials_follow_the_spec():
    spec = load_spec("irl-tiny")
    assert [t["trial_id"] for t in trial_table(spec)] == [
        "base-seed0", "true_reward-seed0", "irl_mse-window-seed0", "irl_mse-plan-seed0", "bc-seed0",
        "rrf-window-seed0", "rrf-plan-seed0", "gail-seed0", "airl-seed0", "airl_guided-seed0"]
    # GAIL and AIRL: their own settings and environment; airl_guided reuses AIRL's artifact, guiding the base
    other_ppo = load_spec("irl-tiny", ["adversarial.ppo.learning_rate=0.01"])
    assert learned_key(spec, "airl", 0) != learned_key(other_ppo, "airl", 0) != learned_key(spec, "gail", 0)
    assert learned_key(spec, "bc", 0) == learned_key(other_ppo, "bc", 0)
    assert learned_key(spec, "airl_guided", 0) != learned_key(other_ppo, "airl_guided", 0)
    assert learned_key(spec, "gail", 0) != learned_key(load_spec("irl-tiny", ["experts.steps=61"]), "gail", 0)
    other_lr = load_spec("irl-tiny", ["irl.learning_rate.mse=0.1"])
    assert learned_key(spec, "irl_mse", 0, "plan") != learned_key(other_lr, "irl_mse", 0, "plan")
    assert learned_key(spec, "bc", 0) == learned_key(other_lr, "bc", 0)
    assert learned_key(spec, "irl_mse", 0, "plan") != learned_key(spec, "irl_mse", 1, "plan")
    # the net is part of what is learned, and of the trial's result
    for method in ("irl_mse", "rrf"):
        assert learned_key(spec, method, 0, "window") != learned_key(spec, method, 0, "plan")
        assert result_key(spec, method, 0, "window") != result_key(spec, method, 0, "plan")
    # the protocol, a user's fixed scale and the selection's candidates change results, not what was learned
    for override in ("evaluation.steps=41", "evaluation.guidance_scales={rrf: 7.0}", "selection.scales.rrf=[1.0]",
                     "selection.seed=3000", "experts.selection_rollouts_per_start=2"):
        other = load_spec("irl-tiny", [override])
        assert learned_key(spec, "rrf", 0, "plan") == learned_key(other, "rrf", 0, "plan"), override
        assert result_key(spec, "rrf", 0, "plan") != result_key(other, "rrf", 0, "plan"), override
    rrf_scale = load_spec("irl-tiny", ["evaluation.guidance_scales={rrf: 7.0}"])
    assert result_key(spec, "irl_mse", 0, "plan") == result_key(rrf_scale, "irl_mse", 0, "plan")
    moved = load_spec("irl-tiny", ["true_reward.weights=[5,-5]"])  # other experts, other truth
    assert learned_key(spec, "base", 0) == learned_key(moved, "base", 0)
    assert learned_key(spec, "irl_mse", 0, "plan") != learned_key(moved, "irl_mse", 0, "plan")
    assert result_key(spec, "base", 0) != result_key(moved, "base", 0)


def test_each_seed_is_a_whole_run():
    """Seed s: its own base data (data_seed + s), base diffuser (trained with s), experts and selection-only
    experts; the references' keys follow the seed's base."""
    from rrf_ray.irl.stages import base_data_key, base_key, experts_key, selection_experts_key

    spec = load_spec("irl-tiny", ["seeds=[0,1]"])
    assert spec.data_seed_of(0) == 0 and spec.data_seed_of(1) == 1
    for key in (base_data_key, base_key, experts_key, selection_experts_key):
        assert key(spec, 0) != key(spec, 1), key.__name__
    assert experts_key(spec, 0) != selection_experts_key(spec, 0)
    assert spec.experts.training(1).seed == 1 and spec.experts.selection(1).seed == 101
    assert learned_key(spec, "base", 0) != learned_key(spec, "base", 1)
    other_data = load_spec("irl-tiny", ["seeds=[0,1]", "data_seed=5"])
    assert base_key(spec, 1) != base_key(other_data, 1)
    # growing the seeds adds runs and leaves the first one's keys as they were
    assert base_key(load_spec("irl-tiny"), 0) == base_key(spec, 0)
    # the selection-only experts do not change what the methods learn from
    more_held = load_spec("irl-tiny", ["experts.selection_rollouts_per_start=3", "experts.selection_seed=7"])
    assert experts_key(spec, 0) == experts_key(more_held, 0)
    assert selection_experts_key(spec, 0) != selection_experts_key(more_held, 0)


def test_the_nets_are_like_for_like():
    """window: a per-step MLP of the position for both methods (same widths); plan: an MLP over the flattened
    plan for both (Algorithm 4's widths), and the relative reward's plan net is a full-horizon window_mlp."""
    from rrf_ray.irl.reward_net import build_irl_reward
    from rrf_ray.rrf.reward_nets import build_reward_net

    spec = load_spec("irl-umaze")
    h = spec.windows.horizon
    w, p = spec.irl_spec("window"), spec.irl_spec("plan")
    assert (w.net, w.input_dims, w.hidden) == ("window_mlp", [2, 3], spec.rrf.reward.hidden)
    assert (p.net, p.input_dims, p.hidden) == ("plan_mlp", None, [384, 128, 64])
    rw, rp = spec.rrf_reward("window"), spec.rrf_reward("plan")
    assert (rw.model_horizon, rw.input_dims) == (1, [2, 3])
    assert (rp.kind, rp.model_horizon, rp.input_dims, rp.hidden) == ("window_mlp", h, None, [384, 128, 64])
    net = build_reward_net(rp, h, 6)
    assert net.mlp[0].in_features == h * 6 + rp.t_embed_dim  # one block: the whole flattened plan, and t
    assert build_irl_reward(p, h, 6).mlp[0].in_features == h * 6
    x = torch.randn(3, h, 6, requires_grad=True)
    grad, = torch.autograd.grad(net(x, torch.zeros(3, dtype=torch.long)).sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0  # it can guide, and score windows of H rows (ERC)
    assert build_irl_reward(w, h, 6).mlp[0].in_features == 2


def test_bad_true_reward_or_missing_expert_dataset_exits_2_naming_it(tmp_path):
    r = sweep("irl-tiny", "--dry-run", "--set", "true_reward.weights=[1,2,3]")
    assert r.returncode == 2 and "true_reward.weights" in r.stderr and "2 weights" in r.stderr
    r = sweep("irl-tiny", "--dry-run", "--set", "evaluation.starts=[[2,1]]")
    assert r.returncode == 2 and "evaluation.starts" in r.stderr and "free cell" in r.stderr
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "minari")}
    r = subprocess.run([sys.executable, "-m", "rrf_ray.sweep", "irl-tiny", "--storage", str(tmp_path),
                        "--set", "experts.dataset=someone/demos-v0"], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "someone/demos-v0" in r.stderr and "experts.dataset" in r.stderr


def test_dry_run_prints_the_memory_of_backprop_through_the_chain():
    r = sweep("irl-umaze", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "differentiable sampling: ~" in r.stdout and "GiB" in r.stdout
    assert "252 segments of K = 10" in r.stdout and "84 segments" in r.stdout  # training, selection-only
    assert "window net: differentiable sampling" in r.stdout and "plan net: differentiable sampling" in r.stdout
    assert "rrf: selected from 3, 10, 30, 100, 300 by the distance to held-out expert segments" in r.stdout
    assert "true_reward: 0.3 = experts.guidance" in r.stdout and "oracle: uses the true reward" in r.stdout
    assert "irl_mmd_matern-window-seed0" in r.stdout and "rrf-plan-seed0" in r.stdout and "bc-seed0" in r.stdout
    r2 = sweep("irl-umaze", "--dry-run", "--set", "irl.backprop_steps=2", "--set",
               "evaluation.guidance_scales={rrf: 5}")
    assert "2 differentiable steps" in r2.stdout
    assert "rrf: 5, fixed by the user (evaluation.guidance_scales), not selected" in r2.stdout


def test_no_shipped_profile_fixes_a_scale_tuned_on_its_report_rollouts():
    for name in ("irl-umaze", "irl", "irl-large", "irl-tiny"):
        spec = load_spec(name)
        assert spec.evaluation.guidance_scales == {}, name
        assert spec.nets == ["window", "plan"], name
        assert set(spec.selection.scales) == {m for m in spec.active_methods if m in SELECTED_SCALES}, name
        assert spec.experts.selection_rollouts_per_start >= 1, name


@pytest.mark.slow
def test_tiny_irl_sweep_end_to_end_killed_then_resumed(tmp_path):
    """The CLI runs every method (the reward-learning ones at both nets), Algorithm 4 moves plans towards the
    experts, each learned reward's scale is the selection's choice on held-out experts that no method trained
    on, and after a driver SIGKILL `--resume` finishes the sweep without recomputing a finished trial."""
    from rrf_ray.data.minari_io import read_metadata
    from rrf_ray.irl.experts import EPISODE_IDS_KEY

    root = tmp_path / "irl-tiny"
    first = root / "trials" / "irl_mse-window-seed0" / "result.json"  # the grid starts with the learning methods
    proc = subprocess.Popen([sys.executable, "-m", "rrf_ray.sweep", "irl-tiny", "--storage", str(tmp_path)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if first.exists() and json.loads(first.read_text())["status"] == "ok":
                break
            assert proc.poll() is None, "the sweep ended before its first trial finished"
            time.sleep(0.5)
        else:
            pytest.fail("first trial did not finish within 600 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stamp = first.stat().st_mtime_ns
    done = {p: p.stat().st_mtime_ns for p in root.glob("artifacts/*/*/DONE")}  # base, experts' diffuser, ...
    assert len(done) >= 3
    assert len([p for p in done if p.parent.parent.name == "policies"]) == 2  # GAIL and AIRL, before stage 5

    r = sweep("irl-tiny", "--storage", str(tmp_path), "--resume", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert first.stat().st_mtime_ns == stamp, "the finished trial was recomputed"
    assert {p: p.stat().st_mtime_ns for p in done} == done, "a finished artifact was rebuilt"
    results = (root / "results.csv").read_text().splitlines()
    assert len(results) == 11 and all(",ok," in line for line in results[1:]), results
    report = (root / "report.md").read_text()
    assert report.index("## Protocol card") < report.index("## Behaviour")
    assert "Algorithm 4, MSE" in report and "3578.5" in report  # the thesis's figure beside ours
    assert "GAIL (imitation" in report and "3782.4" in report and "0.719" in report  # AIRL's thesis ERC
    assert "oracle (uses the true reward)" in report and "| plan |" in report and "| window |" in report
    for name in ("rollouts", "heatmaps"):
        assert (root / "figures" / f"{name}.png").stat().st_size > 1000

    spec = load_spec("irl-tiny")
    trained_on, selected_on = set(), set()
    for t in trial_table(spec):
        m = json.loads((root / "trials" / t["trial_id"] / "result.json").read_text())["metrics"]
        assert m["n_rollouts"] == 2
        if t["method"] in ("bc", "irl_mse", "rrf"):
            trained_on.add(m["expert_dataset"])
        if t["method"] == "bc" or spec.irl_metric(t["method"]):
            assert m["expert_episodes"] == 2  # the training demonstrations only
        if t["method"] in ("gail", "airl"):  # their own PPO policies, trained on the training demonstrations
            assert m["scale_rule"] == "none" and m[f"{t['method']}_timesteps"] >= spec.adversarial.total_timesteps
            trained_on.add(m["expert_dataset"])
        if spec.scores_reward(t["method"]):
            assert 0 <= m["erc"] <= 1
        if t["method"] in SELECTED_SCALES:
            candidates = spec.selection.scales[t["method"]]
            assert m["scale_rule"] == "selected" and m["selection_candidates"] == candidates
            assert m["guidance_scale"] == candidates[int(np.nanargmin(m["selection_distances"]))]
            assert m["selection_seed"] == 2000 and m["selection_segments"] == 24
            selected_on.add(m["selection_dataset"])
        if t["trial_id"] == "irl_mse-plan-seed0":  # trained on the paired MSE: its guided plans come closer
            assert m["segment_mse_guided"] < m["segment_mse_unguided"], m
        if t["method"] == "true_reward":
            assert m["scale_rule"] == "oracle" and m["guidance_scale"] == spec.experts.guidance.scale
    # the held-out expert episodes are in no method's training data
    assert len(trained_on) == 1 and len(selected_on) == 1 and trained_on != selected_on
    ids = {did: read_metadata(did, root / "datasets")[EPISODE_IDS_KEY] for did in trained_on | selected_on}
    train_ids, held_ids = ids[trained_on.pop()], ids[selected_on.pop()]
    assert len(train_ids) == 2 and len(held_ids) == 2 and not set(train_ids) & set(held_ids)
    assert all(i.startswith("experts/seed") for i in train_ids) and all(i.startswith("selection/") for i in held_ids)



def test_a_users_minari_dataset_can_stand_in_for_the_experts(tmp_path, monkeypatch):
    """experts.dataset names any local Minari dataset of PointMaze observations: its episodes, less the
    selection-only ones, are cut into segments."""
    import minari
    from minari.data_collector import EpisodeBuffer

    from rrf_ray.engine.stages import SweepPaths
    from rrf_ray.engine.storage import SweepStorage
    from rrf_ray.irl.stages import check_user_experts, expert_episodes, make_experts
    from rrf_ray.maze2d.pointmaze import make_env

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = make_env(UMAZE)
    rng = np.random.default_rng(0)
    buffers = []
    for _ in range(4):
        obs, act = rng.normal(size=(41, 4)), rng.uniform(-1, 1, size=(40, 2)).astype(np.float32)
        buffers.append(EpisodeBuffer(observations=obs, actions=act, rewards=np.zeros(40),
                                     terminations=np.zeros(40, bool), truncations=np.r_[np.zeros(39, bool), True]))
    minari.create_dataset_from_buffers("me/my-demos-v0", buffers, env=env, action_space=env.action_space,
                                       observation_space=env.observation_space["observation"])
    spec = load_spec("irl-tiny", ["experts.dataset=me/my-demos-v0"])  # 2 starts x 1: the last 2 held out
    check_user_experts(spec)  # exists: no error
    paths = SweepPaths(SweepStorage(str(tmp_path), spec.name))
    make_experts(spec, paths)
    episodes = expert_episodes(spec, paths, 0)
    assert len(episodes) == 2 and episodes[0][0].shape == (41, 4)
    np.testing.assert_allclose(episodes[1][1], buffers[1].actions)
    np.testing.assert_allclose(expert_episodes(spec, paths, 0, "selection")[0][1], buffers[2].actions)
    segs = cut_segments(episodes, spec.irl.segment_steps, spec.windows.stride)
    assert segs.shape == (2 * 4 * 2, 4, 6)  # per episode: 4 phases x 2 blocks of 4 rows in 10 rows
    make_experts(spec, paths)  # made: reused
    too_few = load_spec("irl-tiny", ["experts.dataset=me/my-demos-v0", "experts.selection_rollouts_per_start=2"])
    from rrf_ray.data.minari_io import DatasetError

    with pytest.raises(DatasetError, match="leaves none to learn from"):
        make_experts(too_few, SweepPaths(SweepStorage(str(tmp_path / "other"), spec.name)))


@pytest.mark.parametrize("net", ["plan_mlp", "window_mlp"])
def test_algorithm_4_step_reaches_the_reward_through_the_chain(net, one_torch_thread):
    """One Algorithm 4 loss on a tiny model: every weight of the reward gets a gradient through the guided
    chain (only grad_x R guides, so the output bias, a constant, cannot), and a reward with no gradient
    leaves the plans exactly the unguided ones (same noise)."""
    from rrf_ray.diffusion.differentiable import guided_sample_with_grad
    from rrf_ray.diffusion.model import TrajectoryDiffuser
    from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec
    from rrf_ray.irl.reward_learning import segment_mse
    from rrf_ray.irl.reward_net import build_irl_reward, trajectory_loss

    torch.manual_seed(0)
    model = TrajectoryDiffuser(6, 2, 8, DiffusionSpec(n_timesteps=5, dim=8, dim_mults=[1, 2]))
    spec = load_spec("irl-tiny", [f"irl.net={net}"] + (["irl.input_dims=[2,3]"] if net == "window_mlp" else [])).irl
    reward = build_irl_reward(spec, 8, 6)
    segments = torch.randn(6, spec.segment_steps, 6)
    guidance = GuidanceSpec(scale=0.5, n_guide_steps=1, t_stopgrad=0)
    plans = guided_sample_with_grad(model, 6, {0: segments[:, 0, 2:]}, reward, guidance,
                                    generator=torch.Generator().manual_seed(1))
    for metric in ("mse", "mmd_gauss", "mmd_matern"):
        reward.zero_grad()
        loss = trajectory_loss(metric)(plans[:, :spec.segment_steps], segments)
        loss.backward(retain_graph=True)
        weights = [p for p in reward.parameters() if p.dim() > 1]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
                   for p in weights), metric
    assert all(p.grad is None for p in model.parameters())  # the base stays frozen

    flat = build_irl_reward(spec, 8, 6)
    for p in flat.parameters():
        torch.nn.init.zeros_(p)  # a constant reward: no gradient, so no guidance
    guided, unguided = segment_mse(model, segments.numpy(), flat, guidance, spec.segment_steps, seed=3)
    assert guided == unguided
    guided, unguided = segment_mse(model, segments.numpy(), reward, guidance, spec.segment_steps, seed=3)
    assert guided != unguided
