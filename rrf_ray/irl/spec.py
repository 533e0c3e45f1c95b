"""The IRL experiment's sweep spec (`experiment: irl`): one maze, a true reward as data, every method's knobs.

Inverse RL with one diffuser (thesis Algorithm 4, SPEC section 8) head to head with the relative
reward on the same task: a base diffuser of reward-agnostic Maze2D data, expert rollouts of that
base guided by a known linear reward, and rewards learned back from the experts.

Each entry of `seeds` is a whole run (its own base data, base diffuser, experts, learned parts and
rollouts); each reward-learning method runs once per entry of `nets` (the reward's architecture);
each learned reward's guidance scale is selected without the true reward (`selection`), on expert
episodes that no method trains on (`experts.selection_rollouts_per_start`). docs/irl-protocol.md.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rrf_ray.data.windows import WindowSpec
from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec
from rrf_ray.engine.spec import EstimateSpec, ResourceSpec, Strict
from rrf_ray.maze2d.mazes import DEFAULT_LAYOUTS, Maze, MazeError
from rrf_ray.maze2d.spec import DataSpec, ExpertSpec
from rrf_ray.rrf.spec import PregenSpec, RewardSpec

Metric = Literal["mse", "mmd_gauss", "mmd_matern"]
Method = Literal["base", "true_reward", "irl_mse", "irl_mmd_gauss", "irl_mmd_matern", "bc", "rrf", "gail", "airl",
                 "airl_guided"]
Net = Literal["window", "plan"]
LEARNED_REWARDS = ("irl_mse", "irl_mmd_gauss", "irl_mmd_matern", "rrf")  # the methods with a net and a selection
ADVERSARIAL = ("gail", "airl")  # imitation's trainers (irl/adversarial.py); airl_guided: AIRL's reward guiding the base
SELECTED_SCALES = LEARNED_REWARDS + ("airl_guided",)  # the methods whose guidance scale `selection` may choose
WINDOW_INPUT_DIMS = [2, 3]  # the ball's position in a Maze2D row [action (2) | x, y, vx, vy]
ACTION_DIM = 2
THESIS_UMAZE = {  # its Table 1 (U-maze): return mean, std, ERC
    "base": (2709.87, 199.81, None), "true_reward": (3569.82, 243.84, None),
    "irl_mse": (3578.47, 237.46, 0.689), "irl_mmd_gauss": (3563.60, 262.15, 0.652),
    "irl_mmd_matern": (3557.16, 247.75, 0.457), "bc": (3535.96, 248.75, None),
    "gail": (3782.45, 272.66, None), "airl": (3724.23, 328.94, 0.719),
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
    """The expert demonstrations: the base guided by the true reward, or a local Minari dataset.

    Two sets per run seed s: the training demonstrations (`rollouts_per_start` per start, noise seed
    `seed` + s), which BC, Algorithm 4 and the relative reward's expert diffuser learn from, and the
    selection-only demonstrations (`selection_rollouts_per_start` per start, noise seed
    `selection_seed` + s, a Minari dataset of their own), which only the guidance-scale selection reads.
    """

    dataset: str | None = Field(None, description="a local Minari dataset id to use instead (a user's own demos)")
    guidance: GuidanceSpec = Field(default_factory=lambda: GuidanceSpec(scale=0.1, n_guide_steps=2, t_stopgrad=2))
    seed: int = 0
    selection_rollouts_per_start: int = Field(
        1, ge=0, description="held-out expert rollouts per start that only the guidance-scale selection reads "
        "(0: none, then no scale can be selected); with `dataset`, the dataset's last "
        "selection_rollouts_per_start x len(starts) episodes are held out instead")
    selection_seed: int = Field(100, description="noise seed of the selection-only rollouts (+ the run seed); "
                                "must differ from `seed`")

    TRAINING_FIELDS: ClassVar[tuple[str, ...]] = ("starts", "rollouts_per_start", "steps", "replan_every", "dataset",
                                                  "guidance", "seed")

    def training(self, run_seed: int) -> "ExpertDataSpec":
        """The training demonstrations of run seed `run_seed`."""
        return self.model_copy(update={"seed": self.seed + run_seed})

    def selection(self, run_seed: int) -> "ExpertDataSpec":
        """The selection-only demonstrations of run seed `run_seed`: their own rollouts, their own seed."""
        return self.model_copy(update={"seed": self.selection_seed + run_seed,
                                       "rollouts_per_start": max(1, self.selection_rollouts_per_start)})

    def fingerprint(self) -> dict:
        """What determines one set's rollouts (the selection fields apart: they make the other set)."""
        return self.model_dump(mode="json", include=set(self.TRAINING_FIELDS))

    def n_selection_episodes(self) -> int:
        return self.selection_rollouts_per_start * len(self.starts)

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
                                           "(None: all of [action | observation]); also the selection's distance")
    net: Literal["plan_mlp", "window_mlp"] = Field(
        "plan_mlp", description="plan_mlp: the thesis's MLP over the flattened plan; window_mlp: a per-step MLP "
        "of input_dims, averaged over the plan's rows. A sweep sets it per entry of `nets` (window: window_mlp, "
        "plan: plan_mlp)")
    input_dims: list[int] | None = Field(None, min_length=1, description="columns the net sees (None: all); a "
                                         "sweep's window net sees these (None there: [2, 3], the position), "
                                         "its plan net all columns")
    hidden: list[int] = Field(default_factory=lambda: [384, 128, 64], min_length=1, description="the plan net's "
                              "widths (a sweep's window net takes rrf.reward.hidden, the same for both methods)")
    guidance: GuidanceSpec = Field(default_factory=lambda: GuidanceSpec(scale=0.1, n_guide_steps=2, t_stopgrad=2))
    backprop_steps: int | None = Field(None, gt=0, description="gradients through the last k reverse steps "
                                       "(None: all T, the thesis)")
    epochs: int = Field(100, gt=0)
    batch_size: int = Field(270, gt=0)
    learning_rate: MetricRates = Field(default_factory=MetricRates)
    grad_clip: float | None = Field(None, gt=0.0)
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(50, gt=0)

    @property
    def window_input_dims(self) -> list[int]:
        return list(self.input_dims) if self.input_dims is not None else list(WINDOW_INPUT_DIMS)


class BCSpec(Strict):
    """Behaviour cloning: an MLP policy a = pi(s) on the experts' (s, a) pairs."""

    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    steps: int = Field(2000, gt=0)
    batch_size: int = Field(256, gt=0)
    learning_rate: float = Field(1e-3, gt=0.0)


class PPOSpec(Strict):
    """The adversarial methods' generator: stable-baselines3's PPO."""

    n_steps: int = Field(2048, gt=0, description="environment steps per environment per update")
    batch_size: int = Field(64, gt=0)
    learning_rate: float = Field(3e-4, gt=0.0)
    n_epochs: int = Field(10, gt=0)
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    gae_lambda: float = Field(0.95, gt=0.0, le=1.0)
    ent_coef: float = Field(0.0, ge=0.0)
    net_arch: list[int] = Field(default_factory=lambda: [64, 64], min_length=1)


class AdversarialSpec(Strict):
    """GAIL and AIRL through `imitation` (the thesis ran them off the shelf and gives no settings; these are
    imitation's and stable-baselines3's defaults), on the real PointMaze from the demonstrations' starts,
    episodes as long as the demonstrations (experts.steps), trained on the training demonstrations only."""

    total_timesteps: int = Field(1_000_000, gt=0, description="generator environment steps")
    n_envs: int = Field(8, gt=0, description="PointMaze copies the generator steps at once")
    demo_batch_size: int = Field(1024, gt=0, description="expert transitions per discriminator batch")
    gen_replay_buffer_capacity: int | None = Field(None, gt=0, description="None: one generator round")
    n_disc_updates_per_round: int = Field(4, gt=0)
    disc_learning_rate: float = Field(1e-3, gt=0.0)
    reward_hidden: list[int] = Field(default_factory=lambda: [32, 32], min_length=1,
                                     description="the discriminator's reward (and AIRL's potential) widths")
    ppo: PPOSpec = Field(default_factory=PPOSpec)


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
        default_factory=dict, description="a user's fixed guidance scale per method, overriding the selection "
        "(the report says: fixed by the user, not selected). No shipped profile sets one")
    erc_windows: int = Field(2000, gt=1, description="held-out base windows, drawn across episodes")
    seed: int = Field(1000, description="the report rollouts' environment seed is seed + the run seed")


class SelectionSpec(Strict):
    """How each learned reward's guidance scale is chosen, without the true reward and without the report
    rollouts: among `scales[method]`, the scale whose guided base plans (from the first state of each
    held-out expert segment, noise seed `seed` + the run seed, the same noise for every candidate) come
    closest (K-row MSE over irl.compare_dims, K = irl.segment_steps) to the selection-only expert segments
    (experts.selection_rollouts_per_start). A learned method without candidates keeps its configured scale."""

    scales: dict[str, list[float]] = Field(
        default_factory=dict, description="candidate scales per learned method (irl_mse, irl_mmd_gauss, "
        "irl_mmd_matern, rrf); e.g. {rrf: [3, 10, 30, 100, 300]}")
    seed: int = Field(2000, description="the selection's sampling noise seed (+ the run seed); must differ from "
                      "the report rollouts' seeds (evaluation.seed + seed, and the planners' noise seed = seed)")

    @field_validator("scales")
    @classmethod
    def _candidates(cls, scales: dict[str, list[float]]) -> dict[str, list[float]]:
        for method, values in scales.items():
            if not values:
                raise ValueError(f"selection.scales.{method}: no candidates (leave the method out to keep its "
                                 "configured scale)")
            if len(set(values)) != len(values) or not all(math.isfinite(v) and v >= 0 for v in values):
                raise ValueError(f"selection.scales.{method}: candidates must be distinct finite scales >= 0, "
                                 f"got {values}")
        return scales


class IRLExperimentSpec(Strict):
    """A whole IRL sweep: methods x seeds on one maze."""

    name: str = "irl"
    experiment: Literal["irl"] = "irl"
    maze_name: str = "umaze"
    layout: list[str] = Field(default_factory=lambda: list(DEFAULT_LAYOUTS["umaze"]),
                              description="rows of '#' and 'O' (default: the built-in maze named maze_name)")
    true_reward: TrueRewardSpec = Field(default_factory=TrueRewardSpec)
    methods: list[Method] = Field(default_factory=lambda: ["base", "true_reward", "irl_mse", "irl_mmd_gauss",
                                                           "irl_mmd_matern", "bc", "rrf"], min_length=1)
    nets: list[Net] = Field(default_factory=lambda: ["window", "plan"], min_length=1, description="reward "
                            "architectures every reward-learning method runs at: window = a per-step MLP of the "
                            "position, plan = an MLP over the flattened plan")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="each a whole run: "
                             "its own base data, base diffuser, experts, learned parts and rollouts")
    data: DataSpec = Field(default_factory=DataSpec)
    data_seed: int = Field(0, description="run seed s generates its base data with data_seed + s")
    windows: WindowSpec = Field(default_factory=lambda: WindowSpec(horizon=128, stride=1, pad_end=True))
    diffusion: DiffusionSpec = Field(default_factory=lambda: DiffusionSpec(n_timesteps=64))
    experts: ExpertDataSpec = Field(default_factory=lambda: ExpertDataSpec(
        starts=[(1, 1), (3, 1), (1, 3)], rollouts_per_start=3, steps=300))
    irl: Algorithm4Spec = Field(default_factory=Algorithm4Spec)
    bc: BCSpec = Field(default_factory=BCSpec)
    rrf: RRFSpec = Field(default_factory=RRFSpec)
    adversarial: AdversarialSpec = Field(default_factory=AdversarialSpec)
    evaluation: EvaluationSpec = Field(default_factory=lambda: EvaluationSpec(
        starts=[(1, 1), (1, 2), (3, 1), (3, 2), (1, 3)], rollouts_per_start=20, steps=300))
    selection: SelectionSpec = Field(default_factory=SelectionSpec)
    estimate: EstimateSpec = Field(default_factory=EstimateSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)

    @model_validator(mode="before")
    @classmethod
    def _built_in_layout(cls, raw: Any) -> Any:
        """A built-in maze needs only its name (maze2d/mazes.py defines each layout once)."""
        if isinstance(raw, dict) and "layout" not in raw and raw.get("maze_name") in DEFAULT_LAYOUTS:
            return {**raw, "layout": list(DEFAULT_LAYOUTS[raw["maze_name"]])}
        return raw

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
        for field, values in (("seeds", self.seeds), ("nets", self.nets), ("methods", self.methods)):
            if len(set(values)) != len(values):
                raise ValueError(f"{field} repeats an entry: {values}")
        bad = sorted(set(self.selection.scales) - set(SELECTED_SCALES))
        if bad:
            raise ValueError(f"selection.scales names {bad}: only a learned reward's scale is selected "
                             f"({', '.join(SELECTED_SCALES)}); the oracle keeps experts.guidance")
        bad = sorted(set(self.selection.scales) - set(self.methods))
        if bad:
            raise ValueError(f"selection.scales names methods not in methods: {bad}")
        if any(self.scale_rule(m)[0] == "selected" for m in self.active_methods) and \
                self.experts.selection_rollouts_per_start == 0:
            raise ValueError("selection.scales needs held-out expert episodes: set "
                             "experts.selection_rollouts_per_start >= 1")
        if self.experts.selection_seed == self.experts.seed:
            raise ValueError(f"experts.selection_seed {self.experts.selection_seed} equals experts.seed: the "
                             "selection-only rollouts must draw their own noise")
        report = {self.evaluation.seed + s for s in self.seeds} | set(self.seeds)
        clash = sorted(report & {self.selection_seed(s) for s in self.seeds})
        if clash:
            raise ValueError(f"selection.seed {self.selection.seed} gives selection noise seeds {clash} that the "
                             "report rollouts also use (evaluation.seed + seed, and each seed itself)")
        return self

    def maze(self) -> Maze:
        return Maze(self.maze_name, tuple(self.layout), ())

    def irl_metric(self, method: str) -> str | None:
        return method[len("irl_"):] if method.startswith("irl_") else None

    @property
    def active_methods(self) -> list[str]:
        """Methods to run: `methods`, the IRL ones limited to irl.metrics."""
        return [m for m in self.methods if self.irl_metric(m) is None or self.irl_metric(m) in self.irl.metrics]

    def guidance_for(self, method: str, scale: float | None = None) -> GuidanceSpec:
        """The guidance a method's rollouts use: the experts' for the true reward (the oracle), rrf.guidance
        (if set) for the relative reward, irl.guidance's otherwise; the scale is `scale` when given (a
        selected one), else evaluation.guidance_scales' (a user's), else the configured one."""
        g = self.experts.guidance if method == "true_reward" else self.irl.guidance
        if method == "rrf" and self.rrf.guidance is not None:
            g = self.rrf.guidance
        if scale is not None:
            return g.model_copy(update={"scale": float(scale)})
        if method in self.evaluation.guidance_scales:
            g = g.model_copy(update={"scale": self.evaluation.guidance_scales[method]})
        return g

    def scale_rule(self, method: str) -> tuple[str, list[float] | None]:
        """How a method's guidance scale is set: ("none", None) for the unguided base and BC; ("user", None):
        fixed by evaluation.guidance_scales; ("oracle", None): the demonstrators' own (experts.guidance);
        ("selected", candidates): selection.scales; ("configured", None): the method's configured scale."""
        if method in ("base", "bc", *ADVERSARIAL):
            return "none", None
        if method in self.evaluation.guidance_scales:
            return "user", None
        if method == "true_reward":
            return "oracle", None
        if method in self.selection.scales:
            return "selected", list(self.selection.scales[method])
        return "configured", None

    # -- the axes: nets and run seeds ------------------------------------------------------

    def learns_reward(self, method: str) -> bool:
        return method in LEARNED_REWARDS

    def scores_reward(self, method: str) -> bool:
        """Whether a method's trial scores a learned reward (ERC, heatmap): the reward-learning methods and
        AIRL (whose reward airl_guided reuses: scored once, under airl)."""
        return method in LEARNED_REWARDS or method == "airl"

    def per_step(self, method: str, net: str | None) -> bool:
        """Whether a method's learned reward is a function of one state, so that EPIC and STARC can compare it
        with the true per-step reward: the window nets (the relative reward's only with one-row blocks) and
        AIRL's g(s). A plan net scores whole plans: ERC only."""
        if method in ("airl", "airl_guided"):
            return True
        if net != "window":
            return False
        if self.irl_metric(method):
            return min(self.irl.window_input_dims) >= ACTION_DIM
        return method == "rrf" and self.rrf.reward.is_state_reward(ACTION_DIM)

    def nets_of(self, method: str) -> list[str | None]:
        """A reward-learning method runs at every net; the others have none (one row each)."""
        return list(self.nets) if self.learns_reward(method) else [None]

    def irl_spec(self, net: str) -> Algorithm4Spec:
        """Algorithm 4 at net `net`. window: a per-step MLP of irl.input_dims (the position by default) with the
        relative reward's window widths (rrf.reward.hidden); plan: the thesis's MLP over the flattened plan
        (irl.hidden). Each net has the same widths for both methods."""
        if net == "window":
            return self.irl.model_copy(update={"net": "window_mlp", "input_dims": self.irl.window_input_dims,
                                               "hidden": list(self.rrf.reward.hidden)})
        return self.irl.model_copy(update={"net": "plan_mlp", "input_dims": None})

    def rrf_reward(self, net: str) -> RewardSpec:
        """The relative reward's net at `net`: window = rrf.reward as configured; plan = a window_mlp over the
        whole plan (model_horizon = the planning horizon, every column) with Algorithm 4's hidden widths."""
        if net == "window":
            return self.rrf.reward
        return self.rrf.reward.model_copy(update={"kind": "window_mlp", "model_horizon": self.windows.horizon,
                                                  "input_dims": None, "hidden": list(self.irl.hidden)})

    def data_seed_of(self, seed: int) -> int:
        """The base data's generation seed of run seed `seed`."""
        return self.data_seed + seed

    def selection_seed(self, seed: int) -> int:
        """The selection's sampling noise seed of run seed `seed`."""
        return self.selection.seed + seed

    def describe_scale(self, method: str) -> str:
        """How a method's rollout guidance scale is set, in words (dry run and report)."""
        rule, candidates = self.scale_rule(method)
        g = self.guidance_for(method)
        if rule == "none":
            return "unguided" if method == "base" else "no guidance (a policy)"  # bc, gail, airl
        if rule == "configured":
            where = ("rrf.guidance" if method == "rrf" and self.rrf.guidance is not None else
                     "irl.guidance: Algorithm 4's training scale" if self.irl_metric(method) else "irl.guidance")
            return f"{g.scale:g}, configured ({where}), not selected"
        return {"oracle": f"{g.scale:g} = experts.guidance (the demonstrators' own; oracle: uses the true reward)",
                "user": f"{g.scale:g}, fixed by the user (evaluation.guidance_scales), not selected",
                "selected": f"selected from {', '.join(f'{c:g}' for c in candidates or [])} by the distance to held-out "
                            f"expert segments (selection noise seeds {[self.selection_seed(s) for s in self.seeds]})",
                }[rule]
