"""Specs of the relative reward: its network, its alignment trainer and its training triples."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rrf_ray.engine.spec import Strict


class RewardSpec(Strict):
    """Relative reward network and its alignment trainer (docs/method.md, Models)."""

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

    def is_state_reward(self, action_dim: int) -> bool:
        """A window_mlp of one-row blocks that sees state columns only: one function of the state, summed over a
        window's rows, so EPIC and STARC can compare it per step (metrics/reward_distance.py)."""
        return (self.kind == "window_mlp" and self.model_horizon == 1 and self.input_dims is not None
                and min(self.input_dims) >= action_dim)

    @model_validator(mode="after")
    def _input_dims_need_window_mlp(self) -> "RewardSpec":
        if self.input_dims is not None and self.kind != "window_mlp":
            raise ValueError(f"input_dims is a window_mlp setting; a {self.kind} reward sees every column")
        return self


class PregenSpec(Strict):
    """Training triples (x_eval, x_t(1), x_t(2)) for the reward (docs/method.md, Training triples).

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
        "x_t", description="Algorithm 1: where grad rho is taken (the authors' Maze2D code: base_mean); a reward "
        "that guides with guidance.form janner is queried at x_t")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of shards made for validation, from "
                                "the datasets' held-out episodes only")

    def describe(self) -> str:
        """Where the triples come from, in words (for --dry-run and the report)."""
        held = f", validation from held-out episodes ({self.val_fraction:.0%} of shards)" if self.val_fraction else ""
        if self.algorithm == "dataset_noising":
            return (f"Algorithm 1: {self.noised_windows:,} noised {self.noising_source} dataset windows, "
                    f"grad rho at {self.grad_at}{held}")
        return f"Algorithm 2: {self.chains_per_kind:,} pre-generated chains per model{held}"


class LatentRewardSpec(RewardSpec):
    """A convolutional reward on latents (C, H, W) with t conditioning, trained by the alignment trainer.

    Uses unet_dim / unet_dim_mults (channels per level, each level halves H and W),
    t_embed_dim and hidden (the head after global pooling); model_horizon is unused.
    """

    kind: Literal["latent_conv"] = "latent_conv"
    unet_dim: int = Field(32, gt=0, description="channels of the first level")
    unet_dim_mults: list[int] = Field(default_factory=lambda: [1, 2, 4, 4], min_length=1)
    hidden: list[int] = Field(default_factory=lambda: [128], min_length=0)
    learning_rate: float = Field(1e-4, gt=0.0)
    batch_size: int = Field(64, gt=0)
    train_steps: int = Field(20_000, gt=0)
    checkpoint_every: int = Field(2000, gt=0)
    log_every: int = Field(200, gt=0)
