"""The IRL experiment's sweep spec (`experiment: irl`): one maze, a true reward as data, every method's knobs.

Inverse RL with one diffuser (thesis Algorithm 4, SPEC section 8) head to head with the relative
reward on the same task: a base diffuser of reward-agnostic Maze2D data, expert rollouts of that
base guided by a known linear reward, and rewards learned back from the experts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rrf_ray.data.windows import WindowSpec
from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec
from rrf_ray.engine.spec import EstimateSpec, ResourceSpec, Strict
from rrf_ray.maze2d.mazes import Maze, MazeError
from rrf_ray.maze2d.spec import DataSpec, ExpertSpec
from rrf_ray.rrf.spec import PregenSpec, RewardSpec

Metric = Literal["mse", "mmd_gauss", "mmd_matern"]
Method = Literal["base", "true_reward", "irl_mse", "irl_mmd_gauss", "irl_mmd_matern", "bc", "rrf"]
THESIS_UMAZE = {  # its Table 1 (U-maze): return mean, std, ERC
    "base": (2709.87, 199.81, None), "true_reward": (3569.82, 243.84, None),
    "irl_mse": (3578.47, 237.46, 0.689), "irl_mmd_gauss": (3563.60, 262.15, 0.652),
    "irl_mmd_matern": (3557.16, 247.75, 0.457), "bc": (3535.96, 248.75, None),
}


class TrueRewardSpec(Strict):
    """r(s) = offset + w . (x, y) per step, x = column + 0.5, y = row + 0.5 (maze units, origin top-left,
    walls included): the thesis's 5 (x + y) by default, highest in the bottom-right corner."""

    weights: list[float] = Field(default_factory=lambda: [5.0, 5.0], description="[w_x, w_y]")
    offset: float = 0.0

    @field_validator("weights")
    @classmethod
    def _two_weights(cls, w: list[float]) -> list[float]:
        if len(w) != 2:
            raise ValueError(f"a linear maze reward has 2 weights (x, y), got {len(w)}: {w}")
        if not any(w):
            raise ValueError("all weights are 0: a constant reward has no optimum to recover")
        return w


class RolloutSpec(Strict):
    """Receding-horizon rollouts in the real PointMaze: plan, execute the plan's first action, re-plan."""

    starts: list[tuple[float, float]] = Field(min_length=1, description="start points, (row, col) maze units")
    rollouts_per_start: int = Field(3, gt=0)
    steps: int = Field(300, gt=0, description="environment steps per rollout")
    replan_every: int = Field(1, gt=0, description="environment steps between plans (1: the thesis)")


class ExpertDataSpec(RolloutSpec):
    """The expert demonstrations: the base guided by the true reward, or a local Minari dataset."""

    dataset: str | None = Field(None, description="a local Minari dataset id to use instead (a user's own demos)")
    guidance: GuidanceSpec = Field(default_factory=lambda: GuidanceSpec(scale=0.1, n_guide_steps=2, t_stopgrad=2))
    seed: int = 0

    def segments_per_rollout(self, stride: int, k: int) -> int:
        """Algorithm 5's K-row segments of one rollout, cut from each phase of the stride."""
        return sum(len(range(p, self.steps, stride)) // k for p in range(stride))


class MetricRates(Strict):
    """Adam learning rate per metric M (thesis Table 14, U-maze)."""

    mse: float = Field(5e-4, gt=0.0)
    mmd_gauss: float = Field(2e-3, gt=0.0)
    mmd_matern: float = Field(2e-3, gt=0.0)

    def __getitem__(self, metric: str) -> float:
        return getattr(self, metric)


class Algorithm4Spec(Strict):
    """Algorithm 4: the reward R_phi trained through the base's guided reverse chain."""

    segment_steps: int = Field(10, gt=0, description="K: rows of each expert segment and of each plan compared")
    metrics: list[Metric] = Field(default_factory=lambda: ["mse", "mmd_gauss", "mmd_matern"], min_length=1)
    matern_nu: Literal[0.5, 1.5] = 0.5
    compare_dims: list[int] | None = Field(None, min_length=1, description="columns of each row the loss compares "
                                           "(None: all of [action | observation])")
    net: Literal["plan_mlp", "window_mlp"] = Field(
        "plan_mlp", description="plan_mlp: the thesis's MLP over the flattened plan; window_mlp: a per-step MLP "
        "of input_dims, averaged over the plan's rows")
    input_dims: list[int] | None = Field(None, min_length=1, description="window_mlp: columns it sees")
    hidden: list[int] = Field(default_factory=lambda: [384, 128, 64], min_length=1)
    guidance: GuidanceSpec = Field(default_factory=lambda: GuidanceSpec(scale=0.1, n_guide_steps=2, t_stopgrad=2))
    backprop_steps: int | None = Field(None, gt=0, description="gradients through the last k reverse steps "
                                       "(None: all T, the thesis)")
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(270, gt=0)
    learning_rate: MetricRates = Field(default_factory=MetricRates)
    grad_clip: float | None = Field(None, gt=0.0)
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(50, gt=0)

    @model_validator(mode="after")
    def _inputs_fit_the_net(self) -> Algorithm4Spec:
        if self.net == "plan_mlp" and self.input_dims is not None:
            raise ValueError("input_dims is for net: window_mlp (plan_mlp sees the whole plan)")
        return self


class BCSpec(Strict):
    """Behaviour cloning: an MLP policy a = pi(s) on the experts' (s, a) pairs."""

    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(256, gt=0)
    learning_rate: float = Field(1e-3, gt=0.0)


class RRFSpec(Strict):
    """Relative reward: an expert diffuser fine-tuned from the base on the expert rollouts, its reward
    extracted by the relative-reward pipeline (triples, alignment), then guiding the base."""

    expert: ExpertSpec = Field(default_factory=lambda: ExpertSpec(init="base", train_steps=400, ema_start=100))
    pregen: PregenSpec = Field(default_factory=PregenSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    guidance: GuidanceSpec | None = Field(
        None, description="the relative reward's rollout guidance (None: irl.guidance's); e.g. {form: mean_shift, "
        "scale: 1, grad_at: base_mean} for the step the method implies")


class EvaluationSpec(RolloutSpec):
    """One protocol for every method: guided rollouts from `starts`, ERC on held-out base windows."""

    guidance_scales: dict[str, float] = Field(
        default_factory=dict, description="guidance scale per method (default: irl.guidance's); the relative "
        "reward's scale differs by its construction")
    erc_windows: int = Field(2000, gt=1, description="held-out base windows, drawn across episodes")
    seed: int = 1000


class IRLExperimentSpec(Strict):
    """A whole IRL sweep: methods x seeds on one maze."""

    name: str = "irl"
    experiment: Literal["irl"] = "irl"
    maze_name: str = "umaze"
    layout: list[str] = Field(default_factory=lambda: ["#####", "#OOO#", "###O#", "#OOO#", "#####"])
    true_reward: TrueRewardSpec = Field(default_factory=TrueRewardSpec)
    methods: list[Method] = Field(default_factory=lambda: ["base", "true_reward", "irl_mse", "irl_mmd_gauss",
                                                           "irl_mmd_matern", "bc", "rrf"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    data: DataSpec = Field(default_factory=DataSpec)
    data_seed: int = 0
    windows: WindowSpec = Field(default_factory=lambda: WindowSpec(horizon=128, stride=1, pad_end=True))
    diffusion: DiffusionSpec = Field(default_factory=lambda: DiffusionSpec(n_timesteps=64))
    experts: ExpertDataSpec = Field(default_factory=lambda: ExpertDataSpec(
        starts=[(1, 1), (3, 1), (1, 3)], rollouts_per_start=3, steps=300))
    irl: Algorithm4Spec = Field(default_factory=Algorithm4Spec)
    bc: BCSpec = Field(default_factory=BCSpec)
    rrf: RRFSpec = Field(default_factory=RRFSpec)
    evaluation: EvaluationSpec = Field(default_factory=lambda: EvaluationSpec(
        starts=[(1, 1), (1, 2), (3, 1), (3, 2), (1, 3)], rollouts_per_start=20, steps=300))
    estimate: EstimateSpec = Field(default_factory=EstimateSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)

    @model_validator(mode="after")
    def _consistent(self) -> IRLExperimentSpec:
        try:
            maze = self.maze()
        except MazeError as e:
            raise ValueError(str(e)) from None
        for where, starts in (("experts.starts", self.experts.starts), ("evaluation.starts", self.evaluation.starts)):
            for s in starts:
                if not maze.is_free(*maze.cell_of(s)):
                    raise ValueError(f"{where}: {tuple(s)} is not inside a free cell of {self.maze_name}")
        if self.irl.segment_steps > self.windows.horizon:
            raise ValueError(f"irl.segment_steps {self.irl.segment_steps} exceeds windows.horizon "
                             f"{self.windows.horizon}: a plan has only that many rows to compare")
        bad = sorted(set(self.evaluation.guidance_scales) - set(self.methods))
        if bad:
            raise ValueError(f"evaluation.guidance_scales names methods not in methods: {bad}")
        return self

    def maze(self) -> Maze:
        return Maze(self.maze_name, tuple(self.layout), ())

    def irl_metric(self, method: str) -> str | None:
        return method[len("irl_"):] if method.startswith("irl_") else None

    @property
    def active_methods(self) -> list[str]:
        """Methods to run: `methods`, the IRL ones limited to irl.metrics."""
        return [m for m in self.methods if self.irl_metric(m) is None or self.irl_metric(m) in self.irl.metrics]

    def guidance_for(self, method: str) -> GuidanceSpec:
        """The guidance a method's rollouts use: the experts' for the true reward, irl.guidance's otherwise,
        with evaluation.guidance_scales overriding the scale."""
        g = self.experts.guidance if method == "true_reward" else self.irl.guidance
        if method == "rrf" and self.rrf.guidance is not None:
            g = self.rrf.guidance
        if method in self.evaluation.guidance_scales:
            g = g.model_copy(update={"scale": self.evaluation.guidance_scales[method]})
        return g
