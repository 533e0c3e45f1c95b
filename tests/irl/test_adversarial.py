"""GAIL and AIRL through `imitation` 1.0.1 (installed with --no-deps) on gymnasium 1.x, stable-baselines3 2.x and the
real PointMaze: they train, their policies act, AIRL's reward is a differentiable window reward, artifacts round-trip."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("imitation")

from rrf_ray.data.windows import Normalizer  # noqa: E402
from rrf_ray.engine.loading import load_spec  # noqa: E402
from rrf_ray.irl.adversarial import (  # noqa: E402
    INSTALL,
    MissingImitation,
    PolicyActor,
    WindowRewardOfStates,
    load_adversarial,
    make_task,
    require_imitation,
    save_adversarial,
    train_adversarial,
)

STARTS = [(1, 1), (3, 1)]
STEPS = 30


def scripted_experts(maze, n: int = 4):
    """Demonstrations from the real env: a controller pushing the ball towards the bottom-right free cell."""
    env = make_task(maze, STARTS, STEPS, seed=0)
    target = maze.rowcol_to_xy(np.array([[3.0, 3.0]]))[0]
    episodes = []
    for k in range(n):
        obs, _ = env.reset(seed=k)
        observations, actions = [obs], []
        for _ in range(STEPS):
            action = np.clip(2.0 * (target - obs[:2]) - 0.5 * obs[2:], -1, 1).astype(np.float32)
            obs, _, _, truncated, _ = env.step(action)
            observations.append(obs)
            actions.append(action)
        assert truncated  # the task's horizon is the demonstrations' length
        episodes.append((np.asarray(observations), np.asarray(actions)))
    env.close()
    return episodes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    spec = load_spec("irl-tiny")
    maze = spec.maze()
    episodes = scripted_experts(maze)
    out = {}
    for kind in ("gail", "airl"):
        root = tmp_path_factory.mktemp(kind)
        result = train_adversarial(kind, episodes, maze, STARTS, STEPS, spec.adversarial, seed=0, log_dir=root / "log")
        save_adversarial(result, root / "artifact")
        out[kind] = (result, root)
    return spec, out


def test_gail_and_airl_train_and_their_policies_act_in_the_maze(trained):
    spec, out = trained
    obs = np.array([[0.5, -0.5, 0.0, 0.0], [-1.0, 1.0, 0.1, 0.0]])
    for kind, (result, root) in out.items():
        assert result.metrics[f"{kind}_timesteps"] >= spec.adversarial.total_timesteps
        assert (root / "log" / "progress.csv").stat().st_size > 0  # imitation's per-round statistics, ours
        action = PolicyActor(result.policy)(obs)
        assert action.shape == (2, 2) and np.all(np.abs(action) <= 1)
        back = load_adversarial(root / "artifact")  # the artifact acts and scores like the trained one
        np.testing.assert_allclose(PolicyActor(back.policy)(obs), action, atol=1e-6)
        s = torch.as_tensor(obs, dtype=torch.float32)
        a = torch.zeros(2, 2)
        np.testing.assert_allclose(back.reward(s, a, s, torch.zeros(2)).detach().numpy(),
                                   result.reward(s, a, s, torch.zeros(2)).detach().numpy(), atol=1e-6)


def test_airls_reward_is_a_differentiable_window_reward_of_states(trained):
    _, out = trained
    reward = out["airl"][0].reward
    normalizer = Normalizer("standard", np.linspace(-1, 1, 6).astype(np.float32), np.linspace(0.5, 2, 6).astype(np.float32))
    window = WindowRewardOfStates(reward, normalizer, action_dim=2)
    x = torch.randn(3, 5, 6, requires_grad=True)
    value = window(x, torch.zeros(3, dtype=torch.long))
    assert value.shape == (3,)
    # the sum over the rows of g(state), each state unnormalised from columns 2..5
    states = torch.as_tensor(normalizer.unnormalize(x.detach().numpy())[..., 2:], dtype=torch.float32)
    expected = window.per_state(states.reshape(-1, 4)).reshape(3, 5).sum(1)
    torch.testing.assert_close(value.detach(), expected.detach(), atol=1e-5, rtol=1e-5)
    (grad,) = torch.autograd.grad(value.sum(), x)
    assert torch.all(grad[..., :2] == 0) and grad[..., 2:].abs().sum() > 0  # a guide: it moves states, not actions


def test_a_missing_imitation_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "imitation", None)
    with pytest.raises(MissingImitation, match="pip install --no-deps imitation==1.0.1"):
        require_imitation()
    assert "--no-deps" in INSTALL
