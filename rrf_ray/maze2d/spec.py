"""The Maze2D experiment's sweep spec (`experiment: maze2d`): mazes x goals x seeds and every stage's knobs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rrf_ray.data.windows import WindowSpec
from rrf_ray.diffusion.spec import DiffusionSpec
from rrf_ray.engine.spec import ConfigError, EstimateSpec, ResourceSpec, Strict
from rrf_ray.maze2d.mazes import DEFAULT_GOALS, DEFAULT_LAYOUTS, Maze, MazeError, random_goals
from rrf_ray.rrf.spec import PregenSpec, RewardSpec


class RandomGoals(Strict):
    """Goals drawn uniformly inside free cells: a recipe judged on goals nobody tuned it for."""

    random: int = Field(gt=0, description="how many goals")
    seed: int = 0
    margin: float = Field(0.1, ge=0.0, lt=0.5, description="distance kept from cell edges")

class MazeSpec(Strict):
    """A maze as data: rows of '#' (wall) and 'O' (free), goals as (row, col) maze units (a built-in maze,
    open, umaze, medium or large, takes both from maze2d/mazes.py when the spec leaves them out).

    `goals` may also be `{random: N, seed: S}`: N goals drawn reproducibly inside free cells.
    The drawn list replaces it (so spec.json, the trials and the report name real positions)
    and `random_goals` records how it was drawn.
    """

    layout: list[str]
    goals: list[tuple[float, float]] = Field(min_length=1)
    random_goals: RandomGoals | None = Field(None, description="set when goals were drawn (see goals)")

    @model_validator(mode="before")
    @classmethod
    def _draw_random_goals(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or not isinstance(raw.get("goals"), dict):
            return raw
        recipe = RandomGoals.model_validate(raw["goals"])
        if raw.get("random_goals") not in (None, recipe.model_dump(), raw["goals"]):
            raise ValueError("goals is {random: ...} but random_goals says another draw")
        layout = raw.get("layout")
        if not isinstance(layout, list) or not layout:
            raise ValueError("random goals need the maze's layout")
        try:
            goals = random_goals(layout, recipe.random, recipe.seed, recipe.margin)
        except MazeError as e:  # a bad layout
            raise ValueError(str(e)) from None
        return {**raw, "goals": goals, "random_goals": recipe.model_dump()}

class DataSpec(Strict):
    """Maze2D generation (docs/datasets.md): sizes, controller and split."""

    base_transitions: int = Field(10_000_000, gt=0)
    expert_transitions: int = Field(10_000_000, gt=0)
    chunk_transitions: int = Field(10_000, gt=0, description="transitions per Ray task")
    heldout_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    action_noise: float = Field(0.5, ge=0.0, description="std of Gaussian action noise before clipping")
    p_gain: float = Field(10.0, gt=0.0)
    d_gain: float = Field(1.0, ge=0.0)
    q_gamma: float = Field(0.99, gt=0.0, lt=1.0)
    q_sweeps: int = Field(50, gt=0)
    waypoint_radius: float = Field(0.1, gt=0.0, description="advance to the next waypoint within this distance")
    waypoint_jitter: float = Field(
        0.0, ge=0.0, lt=0.5, description="move each route waypoint uniformly within +-this of its cell centre "
        "(0: D4RL's controller, which drives through cell centres and leaves a lattice of unvisited gaps)")
    base_goal_radius: float = Field(0.5, gt=0.0, description="base data: a goal this close counts as reached")
    expert_goal_radius: float = Field(0.1, gt=0.0, description="expert data: the episode ends this close to the goal")
    base_goal_timeout: int = Field(1000, gt=0, description="base data: steps before an unreached goal is re-drawn")
    base_split_at_goals: bool = Field(
        True, description="base data: a new episode at every goal change; false: one continuous episode per "
        "chunk (D4RL's stream), so windows run through goal changes and none rests at an arbitrary point")
    expert_max_steps: int = Field(1000, gt=0, description="expert data: episodes not at the goal by then are dropped")
    cell_margin: float = Field(0.1, ge=0.0, lt=0.5, description="starts and goals keep this far from cell edges")
    workers: int | None = Field(None, gt=0, description="parallel Ray tasks (default: all CPUs)")


    def fingerprint(self) -> dict:
        """The fields that determine generated data, as JSON; a newer field left at the value that
        reproduces older data is omitted, so datasets and artifacts made before it was added still match."""
        out = self.model_dump(mode="json", exclude={"workers"})
        if out["waypoint_jitter"] == 0.0:
            del out["waypoint_jitter"]
        return out

class ExpertSpec(Strict):
    """How each expert diffuser is trained, where it differs from the base (`diffusion`).

    The paper trains experts from scratch. `init: base` fine-tunes a copy of the trained base
    diffuser on the expert data instead: the two models then share everything the expert data
    does not change, so their step difference (what the reward learns) carries less
    training noise, and far fewer steps suffice. The CPU profiles use it.
    """

    init: Literal["scratch", "base"] = "scratch"
    train_steps: int | None = Field(None, gt=0, description="default: diffusion.train_steps")
    learning_rate: float | None = Field(None, gt=0.0, description="default: diffusion.learning_rate")
    ema_start: int | None = Field(None, ge=0, description="default: diffusion.ema_start")

    def diffusion(self, base: "DiffusionSpec") -> "DiffusionSpec":
        """The expert's training spec: the base's, with this spec's overrides."""
        changes = {k: v for k, v in (("train_steps", self.train_steps), ("learning_rate", self.learning_rate),
                                     ("ema_start", self.ema_start)) if v is not None}
        if self.train_steps is not None:
            changes["checkpoint_every"] = min(base.checkpoint_every, self.train_steps)
        return base.model_copy(update=changes)

    def describe(self, base: "DiffusionSpec") -> str:
        """How the experts are trained, in words (for --dry-run and the report)."""
        steps = self.diffusion(base).train_steps
        return (f"fine-tuned from the base for {steps:,} steps" if self.init == "base"
                else f"trained from scratch for {steps:,} steps")

class EvaluationSpec(Strict):
    """Held-out scoring (docs/method.md, Evaluation)."""

    horizon: int | None = Field(
        None, gt=0, description="rows of the held-out windows that are scored (default: windows.horizon). "
        "A per-step reward (window_mlp) scores any length; shorter windows give each window's reward to a "
        "shorter stretch of path, so the heatmap resolves the goal instead of smearing it over the span")
    max_windows: int = Field(20_000, gt=0, description="held-out windows scored per dataset (a seeded subsample)")
    t: int = Field(0, ge=0, description="diffusion step at which the reward scores clean held-out windows "
                   "(docs/method.md, Evaluation: 0). The reward is trained at every step; a larger t asks the smoother "
                   "reward of a noisier step")

class Maze2DSpec(Strict):
    """A whole sweep: mazes x goals x seeds, and how every stage runs."""

    name: str = "maze2d"
    experiment: Literal["maze2d"] = "maze2d"
    mazes: dict[str, MazeSpec] = Field(
        default_factory=lambda: {
            n: MazeSpec(layout=DEFAULT_LAYOUTS[n], goals=DEFAULT_GOALS[n]) for n in DEFAULT_LAYOUTS
        }
    )
    goals: list[int] | None = Field(None, description="1-based goal indices to run (default: all)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3, 4], min_length=1)
    data: DataSpec = Field(default_factory=DataSpec)
    windows: WindowSpec = Field(default_factory=WindowSpec)
    diffusion: DiffusionSpec = Field(default_factory=DiffusionSpec)
    expert: ExpertSpec = Field(default_factory=ExpertSpec)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    pregen: PregenSpec = Field(default_factory=PregenSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    estimate: EstimateSpec = Field(default_factory=EstimateSpec)
    data_seed: int = Field(0, description="seed of the generated datasets (model seeds are `seeds`)")
    base_per_seed: bool = Field(False, description="one base diffuser per seed instead of one per maze")
    resources: ResourceSpec = Field(default_factory=ResourceSpec)

    @model_validator(mode="before")
    @classmethod
    def _built_in_mazes_by_name(cls, raw: Any) -> Any:
        """A built-in maze (open, umaze, medium, large) needs only its name: its layout and the paper's goals
        come from maze2d/mazes.py, the one place they are defined (`mazes: {umaze: {}}`, or only `goals:`)."""
        if not isinstance(raw, dict) or not isinstance(raw.get("mazes"), dict):
            return raw
        mazes = {}
        for name, m in raw["mazes"].items():
            m = {} if m is None else m
            if isinstance(m, dict) and name in DEFAULT_LAYOUTS:
                m = {"layout": DEFAULT_LAYOUTS[name], "goals": DEFAULT_GOALS[name], **m}
            mazes[name] = m
        return {**raw, "mazes": mazes}

    @field_validator("mazes")
    @classmethod
    def _mazes_are_valid(cls, mazes: dict[str, MazeSpec]) -> dict[str, MazeSpec]:
        for name, m in mazes.items():
            Maze(name, tuple(m.layout), tuple(m.goals))  # raises MazeError naming maze and goal
        return mazes

    @field_validator("goals")
    @classmethod
    def _goal_indices_exist(cls, goals: list[int] | None, info: ValidationInfo) -> list[int] | None:
        for k in goals or []:
            for name, m in (info.data.get("mazes") or {}).items():
                if not 1 <= k <= len(m.goals):
                    raise ValueError(f"goal {k} does not exist in maze {name!r} (goals 1..{len(m.goals)})")
        return goals

    @model_validator(mode="after")
    def _evaluation_windows_fit_the_reward(self) -> "Maze2DSpec":
        if self.evaluation.t >= self.diffusion.n_timesteps:
            raise ValueError(f"evaluation.t {self.evaluation.t} must be below diffusion.n_timesteps "
                             f"({self.diffusion.n_timesteps}): the reward is trained on steps 0..n_timesteps-1")
        h = self.evaluation.horizon
        if h is None or h == self.windows.horizon:
            return self
        if self.reward.kind != "window_mlp":
            raise ValueError(f"evaluation.horizon {h}: a {self.reward.kind} reward scores windows of exactly "
                             f"windows.horizon ({self.windows.horizon}) rows; leave evaluation.horizon unset")
        if h % self.reward.model_horizon:
            raise ValueError(f"evaluation.horizon {h} must be a multiple of reward.model_horizon "
                             f"({self.reward.model_horizon})")
        return self

    @property
    def evaluation_windows(self) -> WindowSpec:
        """The window spec of held-out scoring: the training windows', with evaluation.horizon rows."""
        if self.evaluation.horizon is None:
            return self.windows
        return self.windows.model_copy(update={"horizon": self.evaluation.horizon})

    def maze(self, name: str) -> Maze:
        if name not in self.mazes:
            raise ConfigError(f"unknown maze {name!r}; this spec has: {', '.join(self.mazes)}")
        m = self.mazes[name]
        return Maze(name, tuple(m.layout), tuple(m.goals))
