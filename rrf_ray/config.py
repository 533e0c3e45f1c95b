"""Sweep specifications: pydantic models loaded from `sweeps/*.yaml` with `--set` overrides.

Every knob of a sweep lives here, typed and validated, so a typo in a YAML file or an
override fails at once with the dotted path of the field instead of deep in a trial.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from rrf_ray.mazes import DEFAULT_GOALS, DEFAULT_LAYOUTS, Maze, MazeError, random_goals

SWEEPS_DIR = Path(__file__).resolve().parent.parent / "sweeps"


class ConfigError(ValueError):
    """A bad spec file or override. CLIs print it and exit with code 2."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RandomGoals(Strict):
    """Goals drawn uniformly inside free cells: a recipe judged on goals nobody tuned it for."""

    random: int = Field(gt=0, description="how many goals")
    seed: int = 0
    margin: float = Field(0.1, ge=0.0, lt=0.5, description="distance kept from cell edges")


class MazeSpec(Strict):
    """A maze as data: rows of '#' (wall) and 'O' (free), goals as (row, col) maze units.

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
    """Maze2D generation (SPEC section 3): sizes, controller and split."""

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


class WindowSpec(Strict):
    """Trajectory windows (SPEC section 2): `horizon` rows taken every `stride` steps."""

    horizon: int = Field(256, gt=0)
    stride: int = Field(1, gt=0)
    pad_end: bool = Field(False, description="windows may start at every step, the tail resting at the episode end")

    @property
    def span(self) -> int:
        """Environment steps covered by one window."""
        return (self.horizon - 1) * self.stride + 1


class DiffusionSpec(Strict):
    """Base/expert trajectory diffusers (SPEC section 2)."""

    n_timesteps: int = Field(100, gt=0)
    prediction: Literal["sample", "epsilon"] = "sample"
    clip_denoised: bool = True
    dim: int = Field(32, gt=0)
    dim_mults: list[int] = Field(default_factory=lambda: [1, 4, 8], min_length=1)
    learning_rate: float = Field(2e-4, gt=0.0)
    batch_size: int = Field(128, gt=0)
    train_steps: int = Field(500_000, gt=0)
    ema_decay: float = Field(0.995, ge=0.0, le=1.0)
    ema_every: int = Field(10, gt=0)
    ema_start: int = Field(2000, ge=0)
    action_weight: float = Field(1.0, gt=0.0)
    checkpoint_every: int = Field(10_000, gt=0)
    log_every: int = Field(100, gt=0, description="steps between progress lines and metric reports")


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


class GuidanceSpec(Strict):
    """Classifier guidance by a reward rho (SPEC section 5): x <- x + scale * grad rho(x, t)."""

    scale: float = Field(0.0, description="guidance scale omega")
    n_guide_steps: int = Field(1, ge=1)
    t_stopgrad: int = Field(0, ge=0, description="no guidance for diffusion steps t < t_stopgrad")
    scale_grad_by_std: bool = Field(True, description="multiply the gradient by the posterior variance")


class RewardSpec(Strict):
    """Relative reward network and its alignment trainer (SPEC section 2)."""

    kind: Literal["window_mlp", "value_unet"] = Field(
        "window_mlp", description="MLP over contiguous sub-windows (Maze2D) or U-Net encoder (locomotion)")
    model_horizon: int = Field(1, gt=0, description="window_mlp: steps per sub-window (1 = per-step reward)")
    hidden: list[int] = Field(default_factory=lambda: [128, 64, 32], min_length=1)
    input_dims: list[int] | None = Field(
        None, min_length=1, description="window_mlp: the columns of each row the reward sees (None: all). Maze2D "
        "rows are [action (2) | x, y, vx, vy]: [2, 3] is a reward of the ball's position alone, which cannot "
        "tell the expert's resting at its goal from its velocity and so must say where the goal is")
    t_embed_dim: int = Field(32, gt=0)
    unet_dim: int = Field(32, gt=0, description="value_unet: channels of the first level")
    unet_dim_mults: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1)
    learning_rate: float = Field(5e-5, gt=0.0)
    batch_size: int = Field(256, gt=0)
    train_steps: int = Field(100_000, gt=0)
    ema_decay: float = Field(0.995, ge=0.0, le=1.0)
    grad_clip: float | None = Field(None, gt=0.0, description="clip the gradient norm (None: no clipping)")
    checkpoint_every: int = Field(10_000, gt=0)
    log_every: int = Field(500, gt=0)
    val_batches: int = Field(20, gt=0, description="held-out batches per validation")
    memory_cache_mb: float = Field(
        1024, ge=0, description="training triples that fit in this many MB (decoded, per worker) are read from "
        "their Parquet shards through Ray Data once, in large batches, then kept in the trainer's memory and "
        "reshuffled each epoch: a Ray Data execution per epoch, at the training batch size, costs more than the "
        "training of a small set. 0: stream every epoch")

    @model_validator(mode="after")
    def _input_dims_need_window_mlp(self) -> "RewardSpec":
        if self.input_dims is not None and self.kind != "window_mlp":
            raise ValueError(f"input_dims is a window_mlp setting; a {self.kind} reward sees every column")
        return self


class PregenSpec(Strict):
    """Training triples (x_eval, x_t(1), x_t(2)) for the reward (SPEC section 1).

    algorithm "pregenerate" is Algorithm 2 (both models in lock step from x_T);
    "dataset_noising" is Algorithm 1 (forward-noised dataset windows).
    """

    algorithm: Literal["pregenerate", "dataset_noising"] = "pregenerate"
    chains_per_kind: int = Field(512, gt=0, description="Algorithm 2: chains following each model")
    chains_per_shard: int = Field(64, gt=0)
    noised_windows: int = Field(100_000, gt=0, description="Algorithm 1: triples to make (windows drawn "
                                "from up to this many of each noising source's training windows)")
    noised_per_shard: int = Field(10_000, gt=0)
    noising_source: Literal["base", "expert", "mixed"] = "base"
    grad_at: Literal["x_t", "base_mean"] = Field(
        "x_t", description="Algorithm 1: where grad rho is taken (the authors' Maze2D code: base_mean)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of shards held out for validation")

    def describe(self) -> str:
        """Where the triples come from, in words (for --dry-run and the report)."""
        if self.algorithm == "dataset_noising":
            return (f"Algorithm 1: {self.noised_windows:,} noised {self.noising_source} dataset windows, "
                    f"grad rho at {self.grad_at}")
        return f"Algorithm 2: {self.chains_per_kind:,} pre-generated chains per model"


class ResourceSpec(Strict):
    """Ray resources per stage."""

    num_workers: int = Field(1, gt=0, description="Ray Train workers per training run")
    local_mode: bool = Field(
        True, description="a 1-worker CPU training run runs in its caller's process (no TrainController or "
        "worker actor, which on a small machine cost as much CPU as the training; see checkpoints.LocalRun); "
        "several workers or a GPU always get real Ray Train workers")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(1.0, ge=0.0)
    max_concurrent_trials: int | None = Field(None, gt=0)
    trial_cpus: float = Field(0.1, gt=0.0, description="CPUs held by a trial's own process (its Train runs ask for "
                              "theirs; a local-mode run trains in it and holds cpus_per_worker)")
    pregen_gpus_per_task: float = Field(0.25, ge=0.0, description="GPU fraction per pre-generation task when use_gpu")
    max_failures: int = Field(2, ge=0, description="retries of a failed trial")
    num_cpus: int | None = Field(None, gt=0, description="logical CPUs of a local Ray (default: cores + 1, headroom for Ray Data)")

    @property
    def trains_locally(self) -> bool:
        """Training runs run in their caller's process: one CPU worker, and `local_mode`."""
        return self.local_mode and self.num_workers == 1 and not self.use_gpu

    @property
    def trial_process_cpus(self) -> float:
        """CPUs a trial's own process holds: its local-mode training runs in it."""
        return max(self.trial_cpus, self.cpus_per_worker) if self.trains_locally else self.trial_cpus


class EvaluationSpec(Strict):
    """Held-out scoring (SPEC section 4)."""

    horizon: int | None = Field(
        None, gt=0, description="rows of the held-out windows that are scored (default: windows.horizon). "
        "A per-step reward (window_mlp) scores any length; shorter windows give each window's reward to a "
        "shorter stretch of path, so the heatmap resolves the goal instead of smearing it over the span")
    max_windows: int = Field(20_000, gt=0, description="held-out windows scored per dataset (a seeded subsample)")
    t: int = Field(0, ge=0, description="diffusion step at which the reward scores clean held-out windows (SPEC "
                   "section 4: 0). The reward is trained at every step; a larger t asks the smoother "
                   "reward of a noisier step")


class EstimateSpec(Strict):
    """Step rates for --dry-run's GPU-hour estimate; measure yours with benchmarks/diffuser_train.py."""

    diffuser_samples_per_s: float = Field(2000.0, gt=0.0)
    reward_samples_per_s: float = Field(40000.0, gt=0.0)


class SweepSpec(Strict):
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
    def _evaluation_windows_fit_the_reward(self) -> "SweepSpec":
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


# -- loading ----------------------------------------------------------------------

def resolve_spec_path(name_or_path: str | Path) -> Path:
    """`maze2d` -> `sweeps/maze2d.yaml` (cwd first, then the checkout); a path is used as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"spec file {p} does not exist")
        return p
    for base in (Path.cwd() / "sweeps", SWEEPS_DIR):
        candidate = base / f"{name_or_path}.yaml"
        if candidate.exists():
            return candidate
    known = sorted(q.stem for q in SWEEPS_DIR.glob("*.yaml")) if SWEEPS_DIR.is_dir() else []
    raise ConfigError(f"no sweep named {name_or_path!r} (looked in ./sweeps and {SWEEPS_DIR}); known: {', '.join(known)}")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value parsed as YAML, so lists and numbers work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {key}: value {raw!r} is not valid YAML: {e}") from None
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip().split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(path[: i + 1])} is not a mapping")
            node = child
        node[path[-1]] = value
    return raw


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid sweep spec"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def spec_model(experiment: object) -> type[BaseModel]:
    """The pydantic model of an experiment's sweep spec (the YAML's `experiment` key).

    Each experiment owns its spec model in its own package; imports are deferred so that a
    Maze2D install never imports another experiment's dependencies.
    """
    if experiment == "maze2d":
        return SweepSpec
    if experiment == "locomotion":
        from rrf_ray.locomotion.config import LocomotionSweepSpec

        return LocomotionSweepSpec
    if experiment == "image":
        from rrf_ray.image.config import ImageSweepSpec

        return ImageSweepSpec
    raise ConfigError(f"experiment: unknown experiment {experiment!r}; known: maze2d, locomotion, image")


def spec_from_dict(raw: dict, source: str = "spec", overrides: list[str] | None = None):
    """Validate a raw spec (after `--set` overrides) with its experiment's model."""
    raw = apply_overrides(copy.deepcopy(raw), list(overrides or []))
    try:
        model = spec_model(raw.get("experiment", "maze2d"))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e)) from None
    except MazeError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_spec(name_or_path: str | Path | None = None, overrides: list[str] | None = None):
    """Load a sweep spec by name (`sweeps/NAME.yaml`) or path; None gives the built-in defaults."""
    if name_or_path is None:
        return spec_from_dict(SweepSpec().model_dump(mode="json"), "defaults", overrides)
    path = resolve_spec_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return spec_from_dict(raw, str(path), overrides)


def exit_on_user_error(exc: Exception) -> None:
    """Print a user error (bad spec, bad argument) and exit with code 2."""
    print(f"error: {exc}", file=sys.stderr)
    raise SystemExit(2)
