"""A DDPM over trajectory windows: diffusers' schedule, Janner's conditioning and guidance.

The schedule (cosine betas, `add_noise`) is diffusers' `DDPMScheduler`. The reverse step
is written out as posterior mean + std * noise so that two models can take a step from
the same x with the same noise (Algorithm 2 of the relative-reward method) and so that
guidance can scale by the posterior variance; a test checks it against the scheduler's
own `step`.

Everything here works on normalised windows (B, H, D) of [action | observation].
`cond` maps a time index to the normalised observation to inpaint there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDPMScheduler
from torch import nn

from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec
from rrf_ray.diffusion.unet import temporal_unet

Cond = dict[int, torch.Tensor]
# A differentiable reward rho(x, t) -> (B,), on normalised windows and integer timesteps.
RewardFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def apply_conditioning(x: torch.Tensor, cond: Cond | None, action_dim: int) -> torch.Tensor:
    """Inpaint observations at fixed time indices (returns a new tensor)."""
    if not cond:
        return x
    x = x.clone()
    for i, state in cond.items():
        x[:, i, action_dim:] = state
    return x


@dataclass
class SampleOutput:
    """Normalised samples (B, H, D) and, on request, the chain x_T ... x_0 (T+1, B, H, D)."""

    x: torch.Tensor
    chain: torch.Tensor | None = None


class TrajectoryDiffuser(nn.Module):
    def __init__(self, transition_dim: int, action_dim: int, horizon: int, spec: DiffusionSpec):
        super().__init__()
        self.transition_dim, self.action_dim, self.horizon = transition_dim, action_dim, horizon
        self.spec = spec
        self.unet = temporal_unet(transition_dim, horizon, spec.dim, spec.dim_mults)
        self.scheduler = DDPMScheduler(
            num_train_timesteps=spec.n_timesteps,
            beta_schedule="squaredcos_cap_v2",
            prediction_type=spec.prediction,
            clip_sample=spec.clip_denoised,
            clip_sample_range=1.0,
            variance_type="fixed_small",
        )
        ac = self.scheduler.alphas_cumprod.to(torch.float64)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        betas = self.scheduler.betas.to(torch.float64)
        var = betas * (1 - ac_prev) / (1 - ac)
        buffers = {
            "sqrt_ac": ac.sqrt(),
            "sqrt_one_minus_ac": (1 - ac).sqrt(),
            "coef_x0": betas * ac_prev.sqrt() / (1 - ac),
            "coef_xt": (1 - betas).sqrt() * (1 - ac_prev) / (1 - ac),
            "posterior_var": var.clamp(min=1e-20),
        }
        for k, v in buffers.items():
            self.register_buffer(k, v.to(torch.float32), persistent=False)
        weights = torch.ones(horizon, transition_dim)
        weights[0, :action_dim] = spec.action_weight  # Janner: weight the first action
        self.register_buffer("loss_weights", weights, persistent=False)

    @property
    def n_timesteps(self) -> int:
        return self.spec.n_timesteps

    @property
    def obs_dim(self) -> int:
        return self.transition_dim - self.action_dim

    # -- the network ------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Raw network output (x0 or epsilon) for windows (B, H, D) at timesteps t (B,)."""
        return self.unet(x.transpose(1, 2), t).sample.transpose(1, 2)

    def predict_x0(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = self(x, t)
        if self.spec.prediction == "epsilon":
            out = (x - _at(self.sqrt_one_minus_ac, t) * out) / _at(self.sqrt_ac, t)
        if self.spec.clip_denoised:
            out = out.clamp(-1.0, 1.0)
        return out

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) (diffusers' scheduler)."""
        return self.scheduler.add_noise(x0, noise, t)

    # -- training ---------------------------------------------------------------------
    def loss(self, x0: torch.Tensor, cond: Cond | None = None, generator=None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted MSE of the network's target, with the conditioned states inpainted
        (`t` and `noise` are drawn unless given: a test compares devices on the same draws)."""
        b = x0.shape[0]
        if t is None:
            t = torch.randint(0, self.n_timesteps, (b,), device=x0.device, generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        x_t = self.add_noise(x0, noise, t)
        x_t = apply_conditioning(x_t, cond, self.action_dim)
        out = self(x_t, t)
        if self.spec.prediction == "sample":
            out = apply_conditioning(out, cond, self.action_dim)
            target = x0
        else:
            target = noise
        return ((out - target) ** 2 * self.loss_weights).mean()

    # -- one reverse step -------------------------------------------------------------
    def posterior(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of p(x_{t-1} | x_t): the model's one-step denoised output."""
        x0 = self.predict_x0(x, t)
        mean = _at(self.coef_x0, t) * x0 + _at(self.coef_xt, t) * x
        var = _at(self.posterior_var, t)
        std = torch.where((t > 0).view(-1, 1, 1), var.sqrt(), torch.zeros_like(var))
        return mean, std

    def step(self, x: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_{t-1} = mean + std * noise (no noise at t = 0)."""
        mean, std = self.posterior(x, t)
        return mean + std * noise

    # -- sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, cond: Cond | None = None, guide: RewardFn | None = None,
               guidance: GuidanceSpec | None = None, return_chain: bool = False,
               generator: torch.Generator | None = None) -> SampleOutput:
        """Reverse diffusion from x_T ~ N(0, I), inpainting `cond`, optionally reward-guided.

        With a guide, each step first moves x by n_guide_steps of scale * grad rho(x, t)
        (times the posterior variance if scale_grad_by_std; none for t < t_stopgrad), as in
        Janner's guided sampling. Noise comes only from `generator`, so scale 0 gives
        exactly the unguided samples of the same seed.
        """
        x = self.initial_noise(n, cond, generator)
        chain = [x] if return_chain else None
        for i in reversed(range(self.n_timesteps)):
            x = self.reverse_step(x, i, cond, guide, guidance, generator)
            if chain is not None:
                chain.append(x)
        return SampleOutput(x, torch.stack(chain) if chain is not None else None)

    def initial_noise(self, n: int, cond: Cond | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """x_T ~ N(0, I) with `cond` inpainted: the first draw from `generator` of every sampler."""
        shape = (n, self.horizon, self.transition_dim)
        noise = torch.randn(shape, device=self.sqrt_ac.device, dtype=self.sqrt_ac.dtype, generator=generator)
        return apply_conditioning(noise, cond, self.action_dim)

    def reverse_step(self, x: torch.Tensor, i: int, cond: Cond | None = None, guide: RewardFn | None = None,
                     guidance: GuidanceSpec | None = None, generator: torch.Generator | None = None,
                     create_graph: bool = False) -> torch.Tensor:
        """One guided reverse step x_i -> x_{i-1}, shared by `sample` and the differentiable sampler.

        Guidance (if on at step i), then posterior mean + std * noise with the noise drawn from
        `generator` after the guide ran, then inpainting. create_graph=False detaches x for the
        guide's gradient (Janner's sampler); create_graph=True keeps the graph through it, so a
        loss of the result can be differentiated w.r.t. x and the guide's parameters.
        """
        t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
        active = guide is not None and guidance is not None and guidance.scale != 0 and i >= guidance.t_stopgrad
        if active and guidance.form == "mean_shift":
            mean, std = self.posterior(x, t)
            at = x if guidance.grad_at == "x_t" else apply_conditioning(mean, cond, self.action_dim)
            mean = mean + guidance.scale * self._reward_grad(at, t, guide, create_graph)
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            return apply_conditioning(mean + std * noise, cond, self.action_dim)
        if active:
            x = self._guide(x, t, guide, guidance, cond, create_graph)
        noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return apply_conditioning(self.step(x, t, noise), cond, self.action_dim)

    @staticmethod
    def _reward_grad(x, t, guide: RewardFn, create_graph: bool) -> torch.Tensor:
        """grad rho(x, t); with create_graph the graph through x and rho's parameters is kept."""
        with torch.enable_grad():
            # Keep x's graph only when differentiating through the chain (x may not need grad yet).
            x_in = x if create_graph and x.requires_grad else x.detach().requires_grad_(True)
            grad, = torch.autograd.grad(guide(x_in, t).sum(), x_in, create_graph=create_graph)
        return grad

    def _guide(self, x, t, guide: RewardFn, guidance: GuidanceSpec, cond, create_graph: bool = False) -> torch.Tensor:
        for _ in range(guidance.n_guide_steps):
            grad = self._reward_grad(x, t, guide, create_graph)
            if guidance.scale_grad_by_std:
                grad = _at(self.posterior_var, t) * grad
            x = apply_conditioning(x + guidance.scale * grad, cond, self.action_dim)
        return x


def _at(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """values[t] shaped (B, 1, 1) to broadcast over windows."""
    return values[t].view(-1, 1, 1)


class DiffusionLoss(nn.Module):
    """The diffusion loss of a batch of clean windows as a module's forward, so DDP's gradient hooks see it
    (conditioned on each window's first state, as planning is)."""

    def __init__(self, diffuser: TrajectoryDiffuser, condition_on_start: bool):
        super().__init__()
        self.diffuser = diffuser
        self.condition_on_start = condition_on_start

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        cond = {0: x0[:, 0, self.diffuser.action_dim:]} if self.condition_on_start else None
        return self.diffuser.loss(x0, cond)
