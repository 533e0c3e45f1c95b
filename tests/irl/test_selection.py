"""Guidance-scale selection (issue 31): chosen on held-out expert segments, never with the true reward or on
the report rollouts, and the held-out expert episodes reach no method's training data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rrf_ray.engine.loading import load_spec
from rrf_ray.irl.selection import choose, plan_distance, select_scale, select_then_evaluate
from rrf_ray.maze2d.mazes import Maze

UMAZE = Maze("umaze", ("#####", "#OOO#", "###O#", "#OOO#", "#####"), ())


def test_the_reported_number_is_the_report_score_of_the_selection_choice():
    """Candidate 10 is best on the selection data, 100 on the report data: 10 is chosen, and the reported
    number is report(10), not the best report score; the report is evaluated once, at the chosen scale."""
    candidates = [3.0, 10.0, 30.0, 100.0, 300.0]
    selection_distance = lambda s: (math.log10(s) - 1.0) ** 2 + 0.1  # noqa: E731  least at 10
    report_score = lambda s: -(math.log10(s) - 2.0) ** 2  # noqa: E731  best at 100 (what the true reward prefers)
    evaluated = []

    def evaluate(scale):
        evaluated.append(scale)
        return report_score(scale)

    selection, reported = select_then_evaluate(candidates, selection_distance, evaluate)
    assert selection.chosen == 10.0 and evaluated == [10.0]
    assert reported == report_score(10.0) and reported < max(report_score(c) for c in candidates)
    assert selection.candidates == candidates
    assert selection.distances == pytest.approx([selection_distance(c) for c in candidates])
    m = selection.metrics()
    assert m["selection_candidates"] == candidates and len(m["selection_distances"]) == 5


def test_choice_skips_non_finite_distances_and_fails_when_none_is_finite():
    assert choose([1.0, 2.0, 3.0], [float("nan"), 0.5, 0.2]) == 3.0
    assert choose([1.0, 2.0], [0.2, 0.2]) == 1.0  # ties: the first
    with pytest.raises(ValueError, match="no guidance scale"):
        select_scale([1.0, 2.0], lambda s: float("inf"))


class PushRight(torch.nn.Module):
    """A toy learned reward: the sum over rows of column 2 (x), so guidance pushes plans' x up."""

    def forward(self, x, t=None):
        return x[..., 2].sum(dim=1)


def test_the_criterion_recovers_the_scale_that_made_the_held_out_segments(one_torch_thread):
    """Plant: held-out segments made by the base guided at scale 3 (selection noise seed). The criterion picks
    3, though a 'true reward' that likes x (the report's preference) would take the largest scale."""
    from rrf_ray.diffusion.model import TrajectoryDiffuser
    from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec

    torch.manual_seed(0)
    model = TrajectoryDiffuser(6, 2, 8, DiffusionSpec(n_timesteps=5, dim=8, dim_mults=[1, 2])).eval()
    reward, guidance, k, noise = PushRight(), GuidanceSpec(scale=1.0, n_guide_steps=1), 4, 2000
    cond = {0: torch.randn(12, 4, generator=torch.Generator().manual_seed(5))}
    with torch.no_grad():
        made = model.sample(12, cond, reward, guidance.model_copy(update={"scale": 3.0}),
                            generator=torch.Generator().manual_seed(noise)).x[:, :k].numpy()
    candidates = [0.3, 1.0, 3.0, 10.0, 30.0]
    # the stage's criterion (irl.stages.selection_criterion): plan_distance at each candidate scale
    selection = select_scale(candidates, lambda scale: plan_distance(
        model, made, reward, guidance.model_copy(update={"scale": scale}), k, seed=noise))
    assert selection.chosen == 3.0 and selection.distances[2] == pytest.approx(0.0, abs=1e-10)

    def mean_x(scale):  # what a true reward of x would score: more guidance, more x
        with torch.no_grad():
            return float(model.sample(12, cond, reward, guidance.model_copy(update={"scale": scale}),
                                      generator=torch.Generator().manual_seed(7)).x[..., 2].mean())

    assert max(candidates, key=mean_x) == 30.0
    unguided = plan_distance(model, made, None, None, k, seed=noise)
    assert unguided > selection.distances[2]


def user_demos(tmp_path, monkeypatch, n: int = 5):
    """A user's Minari dataset of n PointMaze-like episodes (41 observations each)."""
    import minari
    from minari.data_collector import EpisodeBuffer

    from rrf_ray.maze2d.pointmaze import make_env

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = make_env(UMAZE)
    rng = np.random.default_rng(0)
    buffers = []
    for _ in range(n):
        obs, act = rng.normal(size=(41, 4)), rng.uniform(-1, 1, size=(40, 2)).astype(np.float32)
        buffers.append(EpisodeBuffer(observations=obs, actions=act, rewards=np.zeros(40),
                                     terminations=np.zeros(40, bool), truncations=np.r_[np.zeros(39, bool), True]))
    minari.create_dataset_from_buffers("me/demos-v0", buffers, env=env, action_space=env.action_space,
                                       observation_space=env.observation_space["observation"])
    env.close()
    return buffers


def test_selection_reads_only_the_held_out_experts_and_never_the_true_reward(tmp_path, monkeypatch,
                                                                              one_torch_thread):
    """The stage's criterion, on a user's demos split into training and selection-only episodes: it runs with
    every way to the true reward raising, on exactly the selection-only segments; the training view that BC,
    Algorithm 4 and the relative reward read holds none of those episodes (ids and contents)."""
    from rrf_ray.data.windows import Normalizer
    from rrf_ray.diffusion.checkpoint import TrainedDiffuser
    from rrf_ray.diffusion.model import TrajectoryDiffuser
    from rrf_ray.engine.stages import SweepPaths
    from rrf_ray.engine.storage import SweepStorage
    from rrf_ray.irl import stages, true_reward
    from rrf_ray.irl.experts import cut_segments, episode_ids

    buffers = user_demos(tmp_path, monkeypatch, n=5)
    spec = load_spec("irl-tiny", ["experts.dataset=me/demos-v0", "experts.starts=[[1,1]]",
                                  "experts.selection_rollouts_per_start=2"])
    paths = SweepPaths(SweepStorage(str(tmp_path / "sweep"), spec.name))
    stages.make_experts(spec, paths)
    train, held = stages.expert_episodes(spec, paths, 0), stages.expert_episodes(spec, paths, 0, "selection")
    assert len(train) == 3 and len(held) == 2  # the last 2 episodes are selection-only
    train_ids = episode_ids(*stages.expert_source(spec, paths, 0, "experts"))
    held_ids = episode_ids(*stages.expert_source(spec, paths, 0, "selection"))
    assert train_ids == [f"me/demos-v0#{i}" for i in range(3)] and held_ids == ["me/demos-v0#3", "me/demos-v0#4"]
    for obs, _ in held:
        assert not any(np.array_equal(obs, o) for o, _ in train)
    np.testing.assert_allclose(held[1][1], buffers[4].actions)
    assert stages.expert_source(spec, paths, 1, "experts") == stages.expert_source(spec, paths, 0, "experts")

    def no_true_reward(*args, **kwargs):
        raise AssertionError("the selection read the true reward")

    monkeypatch.setattr(true_reward.LinearMazeReward, "__call__", no_true_reward)
    monkeypatch.setattr(true_reward.LinearMazeReward, "guide", no_true_reward)
    monkeypatch.setattr(true_reward.PlanReturnGuide, "forward", no_true_reward)
    monkeypatch.setattr(stages, "true_reward_of", no_true_reward)
    torch.manual_seed(0)
    model = TrajectoryDiffuser(6, 2, spec.windows.horizon, spec.diffusion).eval()
    rows = np.concatenate([np.c_[a, o[:-1]] for o, a in train])
    diffuser = TrainedDiffuser(model, Normalizer.fit(rows), 0)
    distance, facts = stages.selection_criterion(spec, paths, "rrf", 0, diffuser, PushRight())
    selection = select_scale(spec.selection.scales["rrf"], distance)
    assert selection.chosen in spec.selection.scales["rrf"] and all(np.isfinite(selection.distances))
    expected = cut_segments(held, spec.irl.segment_steps, spec.windows.stride)
    assert facts["selection_segments"] == len(expected) and facts["selection_seed"] == spec.selection.seed
    assert facts["selection_dataset"] != stages.expert_source(spec, paths, 0)[0]


def test_selection_spec_rules():
    spec = load_spec("irl-tiny")
    assert spec.scale_rule("rrf") == ("selected", [3.0, 30.0, 300.0])
    assert spec.scale_rule("true_reward")[0] == "oracle" and spec.guidance_for("true_reward") == spec.experts.guidance
    assert spec.scale_rule("base")[0] == spec.scale_rule("bc")[0] == "none"
    user = load_spec("irl-tiny", ["evaluation.guidance_scales={rrf: 7.0}"])
    assert user.scale_rule("rrf") == ("user", None) and user.guidance_for("rrf").scale == 7.0
    assert load_spec("irl-tiny", ["selection.scales={}"]).scale_rule("irl_mse")[0] == "configured"
    from rrf_ray.engine.spec import ConfigError

    for override, message in (("selection.scales={true_reward: [1.0]}", "only a learned reward"),
                              ("experts.selection_rollouts_per_start=0", "held-out expert episodes"),
                              ("selection.seed=1000", "report rollouts also use"),
                              ("selection.seed=0", "report rollouts also use"),
                              ("experts.selection_seed=0", "own noise"),
                              ("selection.scales={rrf: []}", "no candidates")):
        with pytest.raises((ConfigError, ValueError), match=message):
            load_spec("irl-tiny", [override])
    no_selection = load_spec("irl-tiny", ["experts.selection_rollouts_per_start=0", "selection.scales={}"])
    assert no_selection.scale_rule("rrf")[0] == "configured"
