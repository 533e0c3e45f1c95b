"""GAIL and AIRL, the thesis's adversarial baselines, through the maintained `imitation` library.

The thesis ran both "off the shelf" from `imitation` on the same expert trajectories; so does this
module, on the real PointMaze with the observations every other method sees ([x, y, vx, vy]) and
episodes as long as the demonstrations, starting from the demonstrations' start points. The
generator is stable-baselines3's PPO; GAIL's discriminator is a reward net of (s, a), AIRL's a
shaped net f(s) + γ h(s') − h(s) whose unshaped part g(s) is the learned reward (state-only, the
disentangled form of Fu et al.). That reward is scored by ERC/EPIC, drawn as a heatmap and can guide
the base diffuser (`WindowRewardOfStates`).

Install: `imitation` 1.0.1 pins gymnasium ~0.29, but its adversarial trainers run on gymnasium 1.x
and stable-baselines3 2.x (tests/irl/test_adversarial.py), so it is installed without its
dependencies plus the one it needs at import time:
    pip install --no-deps imitation==1.0.1 && pip install -e '.[adversarial]'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rrf_ray.data.windows import Normalizer
from rrf_ray.maze2d.mazes import Maze

INSTALL = "pip install --no-deps imitation==1.0.1 && pip install -e '.[adversarial]'"
KINDS = ("gail", "airl")
OBS_DIM, ACT_DIM = 4, 2


class MissingImitation(ImportError):
    """GAIL/AIRL were asked for but `imitation` is not installed (the message says how)."""


def require_imitation() -> None:
    try:
        import imitation  # noqa: F401
        from imitation.algorithms.adversarial.gail import GAIL  # noqa: F401  (needs tensorboard)
    except ImportError as e:
        raise MissingImitation(f"GAIL and AIRL need the `imitation` library ({e}); install it with: {INSTALL}") \
            from None


def make_task(maze: Maze, starts_rowcol, steps: int, seed: int):
    """PointMaze as a fixed-horizon task for the generator: reset to one of the demonstrations' start
    points (drawn with the env's own RNG), `steps` steps, reward 0 (the discriminator supplies it)."""
    import gymnasium as gym

    from rrf_ray.maze2d.pointmaze import make_env, place_ball

    starts_xy = maze.rowcol_to_xy(np.asarray(starts_rowcol, dtype=np.float64).reshape(-1, 2))

    class PointMazeTask(gym.Env):
        observation_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float64)
        action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

        def __init__(self):
            self.env = make_env(maze)
            self.t = 0
            self.episode_seed = seed * 1_000_003

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            xy = starts_xy[self.np_random.integers(len(starts_xy))]
            self.episode_seed += 1
            self.t = 0
            return place_ball(self.env, xy, xy, seed=self.episode_seed), {}

        def step(self, action):
            obs = self.env.unwrapped.step(np.clip(np.asarray(action, np.float64), -1.0, 1.0))[0]["observation"]
            self.t += 1
            return np.asarray(obs, np.float64), 0.0, False, self.t >= steps, {}

        def close(self):
            self.env.close()

    return PointMazeTask()


def demonstrations(episodes) -> list:
    """The expert episodes [(observations (L+1, 4), actions (L, 2))] as imitation's trajectories."""
    from imitation.data.types import Trajectory

    return [Trajectory(obs=np.asarray(o, np.float64)[:, :OBS_DIM], acts=np.asarray(a, np.float32), infos=None,
                       terminal=False) for o, a in episodes]


def reward_net(kind: str, venv, spec):
    """GAIL: a net of (s, a); AIRL: g(s) + γ h(s') − h(s), the learned reward g state-only."""
    from imitation.rewards.reward_nets import BasicRewardNet, BasicShapedRewardNet
    from imitation.util.networks import RunningNorm

    if kind == "gail":
        return BasicRewardNet(venv.observation_space, venv.action_space, hid_sizes=tuple(spec.reward_hidden),
                              normalize_input_layer=RunningNorm)
    return BasicShapedRewardNet(venv.observation_space, venv.action_space, use_action=False,
                                reward_hid_sizes=tuple(spec.reward_hidden),
                                potential_hid_sizes=tuple(spec.reward_hidden), discount_factor=spec.ppo.gamma,
                                normalize_input_layer=RunningNorm)


@dataclass
class AdversarialResult:
    kind: str
    policy: object  # stable-baselines3 PPO
    reward: nn.Module  # imitation RewardNet: GAIL's discriminator logit, AIRL's g(s)
    metrics: dict


def train_adversarial(kind: str, episodes, maze: Maze, starts_rowcol, steps: int, spec, seed: int,
                      log_dir: Path) -> AdversarialResult:
    """Train GAIL or AIRL for spec.total_timesteps generator steps on `episodes` (imitation's per-round
    statistics to log_dir/progress.csv); a non-finite reward net fails loudly."""
    require_imitation()
    from imitation.algorithms.adversarial.airl import AIRL
    from imitation.algorithms.adversarial.gail import GAIL
    from imitation.util.logger import configure as imitation_logger
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    if kind not in KINDS:
        raise ValueError(f"adversarial method must be one of {KINDS}, not {kind!r}")
    torch.manual_seed(seed)
    venv = DummyVecEnv([lambda i=i: make_task(maze, starts_rowcol, steps, seed * 100 + i)
                        for i in range(spec.n_envs)])
    venv.seed(seed)
    p = spec.ppo
    learner = PPO("MlpPolicy", venv, n_steps=p.n_steps, batch_size=p.batch_size, learning_rate=p.learning_rate,
                  n_epochs=p.n_epochs, gamma=p.gamma, gae_lambda=p.gae_lambda, ent_coef=p.ent_coef,
                  policy_kwargs={"net_arch": list(p.net_arch)}, seed=seed, device="cpu", verbose=0)
    net = reward_net(kind, venv, spec)
    demos = demonstrations(episodes)
    logger = imitation_logger(str(log_dir), ["csv"])  # a folder of ours: never imitation's temp directory
    trainer_cls = GAIL if kind == "gail" else AIRL
    trainer = trainer_cls(demonstrations=demos, demo_batch_size=min(spec.demo_batch_size, sum(len(d) for d in demos)),
                          gen_replay_buffer_capacity=spec.gen_replay_buffer_capacity,
                          n_disc_updates_per_round=spec.n_disc_updates_per_round, venv=venv, gen_algo=learner,
                          reward_net=net, disc_opt_kwargs={"lr": spec.disc_learning_rate},
                          allow_variable_horizon=False, custom_logger=logger, init_tensorboard=False,
                          log_dir=str(log_dir))
    trainer.train(spec.total_timesteps)
    for name, param in net.named_parameters():
        if not torch.isfinite(param).all():
            raise FloatingPointError(f"{kind}: the reward net's {name} is not finite after training")
    venv.close()
    # GAIL: the discriminator's logit; AIRL: the unshaped g(s). eval(): its input RunningNorm must stop updating.
    reward = trainer.reward_test.eval()
    return AdversarialResult(kind, learner, reward, {f"{kind}_timesteps": int(learner.num_timesteps)})


def save_adversarial(result: AdversarialResult, directory: Path) -> None:
    """policy.zip (SB3), reward.pt (the whole imitation reward module) and meta.json."""
    directory.mkdir(parents=True, exist_ok=True)
    result.policy.save(directory / "policy.zip")
    torch.save(result.reward, directory / "reward.pt")
    (directory / "meta.json").write_text(json.dumps({"kind": result.kind, **result.metrics}))


def load_adversarial(directory: Path) -> AdversarialResult:
    require_imitation()
    from stable_baselines3 import PPO

    meta = json.loads((directory / "meta.json").read_text())
    policy = PPO.load(directory / "policy.zip", device="cpu")
    reward = torch.load(directory / "reward.pt", weights_only=False).eval()
    return AdversarialResult(meta.pop("kind"), policy, reward, meta)


class PolicyActor:
    """The trained generator as a rollout actor: its deterministic (mean) action for each observation."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        action, _ = self.policy.predict(np.asarray(obs, np.float64)[:, :OBS_DIM], deterministic=True)
        return np.asarray(action, np.float64)


class WindowRewardOfStates(nn.Module):
    """A per-state reward g(s) as a window reward ρ(x, t) = Σ_rows g(s_row) of normalised diffuser windows
    [a | s] (t unused): differentiable in x, so AIRL's reward can score windows (ERC, EPIC, heatmap) and
    guide the base diffuser like every other learned reward."""

    def __init__(self, reward: nn.Module, normalizer: Normalizer, action_dim: int):
        super().__init__()
        self.reward = reward
        a = action_dim
        self.register_buffer("scale", torch.as_tensor(normalizer.scale[a:a + OBS_DIM], dtype=torch.float32))
        self.register_buffer("shift", torch.as_tensor(normalizer.shift[a:a + OBS_DIM], dtype=torch.float32))
        self.a = a

    def per_state(self, obs: torch.Tensor) -> torch.Tensor:
        """g(s) for states (N, 4) in environment units."""
        n = len(obs)
        obs = obs.to(torch.float32)
        return self.reward(obs, torch.zeros(n, ACT_DIM), obs, torch.zeros(n)).reshape(n)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        obs = x[..., self.a:self.a + OBS_DIM] * self.scale + self.shift
        b, h = obs.shape[:2]
        return self.per_state(obs.reshape(b * h, OBS_DIM)).reshape(b, h).sum(dim=1)
