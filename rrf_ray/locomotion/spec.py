"""The locomotion sweep spec (`experiment: locomotion`), loaded by rrf_ray.engine.spec.load_spec."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from rrf_ray.data.windows import WindowSpec
from rrf_ray.diffusion.spec import DiffusionSpec
from rrf_ray.engine.spec import EstimateSpec, ResourceSpec, Strict
from rrf_ray.rrf.spec import PregenSpec, RewardSpec

# D4RL's reference returns (docs/locomotion.md): score = 100 (R - min) / (max - min).
D4RL_REF_SCORES = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
}
METHODS = ("unsteered", "discriminator", "rrf")


def d4rl_key(env_id: str) -> str:
    """`HalfCheetah-v5` -> `halfcheetah`."""
    return env_id.split("-")[0].lower()


class EnvironmentSpec(Strict):
    """One environment: its gymnasium id and the local Minari datasets of base and expert."""

    env_id: str = Field(..., description="gymnasium MuJoCo environment, e.g. HalfCheetah-v5")
    base_dataset: str = Field(..., description="local Minari id of the base (low-reward) data, e.g. D4RL medium-replay")
    expert_dataset: str = Field(..., description="local Minari id of the expert data")
    horizon: int | None = Field(None, gt=0, description="planning horizon H (default: windows.horizon)")
    dim_mults: list[int] | None = Field(None, min_length=1, description="diffusers' U-Net levels "
                                        "(default: diffusion.dim_mults); H must divide by 2^(levels - 1)")
    ref_min_score: float | None = Field(None, description="D4RL normaliser (default: D4RL's for this env)")
    ref_max_score: float | None = None
    reward_learning_rate: float | None = Field(None, gt=0.0, description="default: reward.learning_rate")

    @model_validator(mode="after")
    def _has_reference_scores(self) -> "EnvironmentSpec":
        known = D4RL_REF_SCORES.get(d4rl_key(self.env_id))
        if known is None and (self.ref_min_score is None or self.ref_max_score is None):
            raise ValueError(f"{self.env_id}: no D4RL reference scores known; set ref_min_score and ref_max_score")
        lo, hi = self.reference_scores
        if not hi > lo:
            raise ValueError(f"ref_max_score must exceed ref_min_score, got {lo} and {hi}")
        return self

    @property
    def reference_scores(self) -> tuple[float, float]:
        lo, hi = D4RL_REF_SCORES.get(d4rl_key(self.env_id), (None, None))
        return (self.ref_min_score if self.ref_min_score is not None else lo,
                self.ref_max_score if self.ref_max_score is not None else hi)


class DiscriminatorSpec(Strict):
    """The baseline: the reward's architecture trained with BCE on base (0) vs expert (1) windows,
    noised by the diffusion schedule so that it guides at every step by grad log sigmoid(D)."""

    learning_rate: float = Field(2e-4, gt=0.0)
    batch_size: int = Field(128, gt=0)
    train_steps: int = Field(50_000, gt=0)
    ema_decay: float = Field(0.995, ge=0.0, le=1.0)
    checkpoint_every: int = Field(10_000, gt=0)
    log_every: int = Field(500, gt=0)


class SearchSpec(Strict):
    """Guidance-scale search: omega x t_stopgrad chosen on selection rollouts, reported on fresh ones.

    Every steered method's setting is chosen per environment and model seed by its mean score over
    the selection seeds' rollouts; the chosen setting (and the unsteered planner) is then rolled out
    again on the report seeds, which share nothing with the selection seeds, and only those report
    rollouts enter Table 1 (docs/method.md, "Protocol")."""

    search: Literal["grid", "optuna"] = Field(
        "grid", description="grid: every (omega, t_stopgrad) on the selection seeds; optuna: Optuna samples "
        "(omega, t_stopgrad) per environment, method and model seed (pip install -e '.[optuna]')")
    omegas: list[float] = Field(default_factory=lambda: [0.001, 0.01, 0.1, 0.2, 0.3, 0.4, 0.5], min_length=1,
                                description="guidance scales searched (> 0: the unsteered planner is its own row)")
    t_stopgrads: list[int] = Field(default_factory=lambda: [0, 1, 2, 5, 8, 10], min_length=1)
    selection_seeds: list[int] = Field(default_factory=lambda: [0, 1, 2, 3], min_length=1,
                                       description="rollout seeds the settings are chosen on")
    report_seeds: list[int] = Field(default_factory=lambda: [100, 101, 102, 103], min_length=1,
                                    description="fresh rollout seeds of the chosen settings and the unsteered "
                                    "planner: the only rollouts Table 1 reports")
    optuna_samples: int = Field(20, gt=0, description="optuna: trials per environment, method and model seed")
    methods: list[Literal["unsteered", "discriminator", "rrf"]] = Field(default_factory=lambda: list(METHODS),
                                                                         min_length=1)
    n_guide_steps: int = Field(2, ge=1)
    scale_grad_by_std: bool = True
    guidance_form: Literal["janner", "mean_shift"] = Field(
        "janner", description="janner: x moves by omega * (variance x) grad rho before each step; mean_shift: the "
        "step's mean moves once by omega * grad rho at x_t (the shift the reward was trained to match)")

    @field_validator("omegas")
    @classmethod
    def _positive(cls, omegas: list[float]) -> list[float]:
        if any(not w > 0 for w in omegas):
            raise ValueError(f"must be > 0, got {omegas}: omega 0 is the unsteered planner, which is its own row "
                             "(method unsteered); in a steered grid it would let 'steered' never score below "
                             "unsteered by construction")
        return omegas

    @model_validator(mode="after")
    def _valid(self) -> "SearchSpec":
        if any(t < 0 for t in self.t_stopgrads):
            raise ValueError("t_stopgrads must be >= 0")
        shared = sorted(set(self.selection_seeds) & set(self.report_seeds))
        if shared:
            raise ValueError(f"selection_seeds and report_seeds share {shared}: the reported rollouts must be "
                             "fresh, never the ones a setting was chosen on")
        return self

    @property
    def steered_methods(self) -> list[str]:
        return [m for m in self.methods if m != "unsteered"]


class RolloutSpec(Strict):
    """Receding-horizon rollouts: plan, execute the first action, re-plan every step."""

    n_envs: int = Field(64, gt=0, description="rollouts per trial (one vectorised batch)")
    max_steps: int = Field(1000, gt=0, description="environment steps per rollout")
    threads: int = Field(1, gt=0, description="torch CPU threads of a rollout trial")
    gpus: float = Field(0.0, ge=0.0, description="GPUs held by each rollout trial (> 0: it plans on the GPU)")


class LocomotionSweepSpec(Strict):
    """Base diffuser (low-reward data) steered by the relative reward towards the expert (docs/locomotion.md)."""

    name: str = "locomotion"
    experiment: Literal["locomotion"] = "locomotion"
    datasets_root: str | None = Field(None, description="Minari datasets root holding the ids below "
                                                        "(default: MINARI_DATASETS_PATH, else ~/.minari/datasets)")
    environments: dict[str, EnvironmentSpec] = Field(..., min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1,
                             description="model seeds: each trains its own diffusers, reward and discriminator and "
                             "chooses its own settings (the data is shared; rollout seeds are search.*_seeds)")
    transfer_seeds: list[int] = Field(default_factory=list, description="seeds of further base diffusers (none "
                                      "of `seeds`), each steered by every model seed's reward and discriminator at "
                                      "the setting chosen for it, never re-tuned: the paper's transfer table")
    windows: WindowSpec = Field(default_factory=lambda: WindowSpec(horizon=32, stride=1, pad_end=True))
    diffusion: DiffusionSpec = Field(default_factory=lambda: DiffusionSpec(
        n_timesteps=20, prediction="sample", clip_denoised=False, batch_size=32, train_steps=1_000_000,
        ema_start=2000))
    reward: RewardSpec = Field(default_factory=lambda: RewardSpec(
        kind="value_unet", learning_rate=2e-4, batch_size=128, train_steps=100_000))
    pregen: PregenSpec = Field(default_factory=lambda: PregenSpec(
        algorithm="dataset_noising", noising_source="mixed", grad_at="x_t"))
    discriminator: DiscriminatorSpec = Field(default_factory=DiscriminatorSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    rollout: RolloutSpec = Field(default_factory=RolloutSpec)
    estimate: EstimateSpec = Field(default_factory=EstimateSpec)
    resources: ResourceSpec = Field(default_factory=ResourceSpec)

    @field_validator("seeds", "transfer_seeds")
    @classmethod
    def _distinct_seeds(cls, seeds: list[int], info: ValidationInfo) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{info.field_name} repeat: {seeds}")
        return seeds

    @model_validator(mode="after")
    def _consistent(self) -> "LocomotionSweepSpec":
        shared = sorted(set(self.seeds) & set(self.transfer_seeds))
        if shared:
            raise ValueError(f"transfer_seeds and seeds share {shared}: a transfer base must be one the reward "
                             "and its setting never saw")
        if self.reward.kind != "value_unet":
            raise ValueError("locomotion: reward.kind must be value_unet (a window MLP is the Maze2D reward)")
        if self.windows.stride != 1:
            raise ValueError("locomotion: windows.stride must be 1 (plans are executed step by step)")
        from rrf_ray.diffusion.unet import check_horizon

        for env in self.environments:
            try:
                check_horizon(self.horizon(env), self.diffusion_of(env).dim_mults)
            except ValueError as e:
                raise ValueError(f"environments.{env}: {e}") from None
        for t in self.search.t_stopgrads:
            if t >= self.diffusion.n_timesteps:
                raise ValueError(f"search.t_stopgrads: {t} >= diffusion.n_timesteps ({self.diffusion.n_timesteps}) "
                                 "would switch guidance off entirely")
        return self

    def horizon(self, env: str) -> int:
        return self.environments[env].horizon or self.windows.horizon

    def windows_of(self, env: str) -> WindowSpec:
        return self.windows.model_copy(update={"horizon": self.horizon(env)})

    def diffusion_of(self, env: str) -> DiffusionSpec:
        mults = self.environments[env].dim_mults
        return self.diffusion if mults is None else self.diffusion.model_copy(update={"dim_mults": mults})

    def reward_of(self, env: str) -> RewardSpec:
        lr = self.environments[env].reward_learning_rate
        return self.reward if lr is None else self.reward.model_copy(update={"learning_rate": lr})
