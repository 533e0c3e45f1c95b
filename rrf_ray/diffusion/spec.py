"""Specs of the trajectory diffusers and of reward guidance (docs/method.md, Models and Guidance)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rrf_ray.engine.spec import Strict


class DiffusionSpec(Strict):
    """Base/expert trajectory diffusers (docs/method.md, Models)."""

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


class GuidanceSpec(Strict):
    """Reward guidance of the reverse chain (docs/method.md, "Guidance").

    form "janner": before each step, n_guide_steps of x <- x + scale * grad rho(x, t) (times the
    posterior variance if scale_grad_by_std), then the step from the moved x (Janner's sampler).
    form "mean_shift": the step's mean moves once by scale * grad rho, the shift the relative reward
    was trained to match (mu_expert - mu_base), so scale 1 is the expert the method implies; grad rho
    is taken where the reward was trained (`grad_at`: x_t, or the base model's posterior mean).
    """

    scale: float = Field(0.0, description="guidance scale omega")
    form: Literal["janner", "mean_shift"] = "janner"
    n_guide_steps: int = Field(1, ge=1, description="janner: gradient steps per reverse step")
    t_stopgrad: int = Field(0, ge=0, description="no guidance for diffusion steps t < t_stopgrad")
    scale_grad_by_std: bool = Field(True, description="janner: multiply the gradient by the posterior variance")
    grad_at: Literal["x_t", "base_mean"] = Field(
        "x_t", description="mean_shift: where grad rho is taken (match the reward's pregen.grad_at)")
