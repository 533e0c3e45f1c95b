"""Reward networks rho(x, t) on normalised windows (B, H, D) and diffusion steps t (B,).

All are smooth (Mish), since training differentiates their input-gradient again. One
registry (`build_reward_net`, by `spec.kind`) holds them all: the window MLP and value U-Net
over windows, and the convolutional `latent_conv` reward over (B, C, H, W) image latents.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet1DModel
from torch import nn

from rrf_ray.rrf.spec import LatentRewardSpec, RewardSpec


class SinusoidalTimeEmbedding(nn.Module):
    """Sinusoidal embedding of the diffusion step, then an MLP (dim -> 4 dim -> dim)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / max(half - 1, 1))
        angles = t.float()[:, None] * freqs[None]
        emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if emb.shape[-1] < self.dim:
            emb = nn.functional.pad(emb, (0, self.dim - emb.shape[-1]))
        return self.mlp(emb)


def mlp_to_scalar(width: int, hidden: list[int]) -> nn.Sequential:
    """Linear + Mish layers of `hidden` widths, then a linear layer to one value: the head of every reward net."""
    layers = []
    for h in hidden:
        layers += [nn.Linear(width, h), nn.Mish()]
        width = h
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


class WindowMLPReward(nn.Module):
    """Mean over contiguous sub-windows of `model_horizon` steps of MLP(sub-window, t).

    model_horizon = 1 is a per-step reward g(s, a, t); model_horizon = H scores the whole
    window at once. Sub-windows are consecutive blocks (not a strided interleaving).
    """

    def __init__(self, horizon: int, transition_dim: int, model_horizon: int = 1,
                 hidden=(128, 64, 32), t_embed_dim: int = 32, input_dims=None):
        super().__init__()
        if horizon % model_horizon:
            raise ValueError(f"reward model_horizon {model_horizon} must divide the window horizon {horizon}")
        if input_dims is not None and not all(0 <= d < transition_dim for d in input_dims):
            raise ValueError(f"reward input_dims {list(input_dims)} must be columns 0..{transition_dim - 1}")
        self.horizon, self.transition_dim, self.model_horizon = horizon, transition_dim, model_horizon
        self.input_dims = None if input_dims is None else [int(d) for d in input_dims]
        seen = transition_dim if input_dims is None else len(self.input_dims)
        self.time = SinusoidalTimeEmbedding(t_embed_dim)
        self.mlp = mlp_to_scalar(model_horizon * seen + t_embed_dim, hidden)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.input_dims is not None:
            x = x[..., self.input_dims]
        b, h, d = x.shape
        n = h // self.model_horizon
        blocks = x.reshape(b, n, self.model_horizon * d)  # consecutive steps stay together
        # The first layer on cat([block, t-embedding]), with the t part computed once per window
        # rather than once per block (the same weights; measured 28.9 -> 25.4 ms per alignment step at
        # model_horizon 1, H 32, batch 64).
        first, k = self.mlp[0], blocks.shape[-1]
        per_window = F.linear(self.time(t), first.weight[:, k:], first.bias)
        hidden = F.linear(blocks, first.weight[:, :k]) + per_window[:, None, :]
        return self.mlp[1:](hidden).squeeze(-1).mean(dim=1)


class ValueUNetReward(nn.Module):
    """Janner's "ValueFunction": a temporal U-Net encoder over the whole window, plus t, to a scalar."""

    def __init__(self, horizon: int, transition_dim: int, dim: int = 32, dim_mults=(1, 2, 4, 8)):
        super().__init__()
        channels = tuple(dim * m for m in dim_mults)
        if channels[-1] % 32:  # the value head narrows to channels/4 under 8-group norms
            raise ValueError(f"value_unet: unet_dim * last dim_mult must be a multiple of 32, got {channels[-1]}")
        self.net = UNet1DModel(
            sample_size=horizon, in_channels=transition_dim, out_channels=1, extra_in_channels=0,
            time_embedding_type="positional", flip_sin_to_cos=False, use_timestep_embedding=True,
            freq_shift=1, down_block_types=("DownResnetBlock1D",) * len(channels), up_block_types=(),
            mid_block_type="ValueFunctionMidBlock1D", out_block_type="ValueFunction",
            block_out_channels=channels, act_fn="mish", norm_num_groups=min(8, dim), layers_per_block=1,
            downsample_each_block=True,
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x.transpose(1, 2), t).sample.squeeze(-1)


# -- latent_conv: (C, H, W) latents (the image experiment) ---------------------------------
# A small U-Net encoder: residual conv blocks (GroupNorm, Mish) whose features are shifted by an
# embedding of t, halving the resolution between levels, then global average pooling and an MLP
# head to a scalar.

def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class TimeResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.t_proj = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.Mish()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x))) + self.t_proj(temb)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.skip(x)


class LatentConvReward(nn.Module):
    def __init__(self, sample_shape, dim: int = 32, dim_mults=(1, 2, 4, 4), t_embed_dim: int = 32, hidden=(128,)):
        super().__init__()
        if len(sample_shape) != 3:
            raise ValueError(f"latent_conv scores (C, H, W) latents, got samples of shape {tuple(sample_shape)}")
        channels, height, width = sample_shape
        if min(height, width) < 2 ** (len(dim_mults) - 1):
            raise ValueError(f"latent_conv: {len(dim_mults)} levels halve {height}x{width} latents below 1x1; "
                             "use fewer unet_dim_mults")
        self.sample_shape = tuple(sample_shape)
        self.time = SinusoidalTimeEmbedding(t_embed_dim)
        widths = [dim * m for m in dim_mults]
        self.stem = nn.Conv2d(channels, widths[0], 3, padding=1)
        self.blocks, self.down = nn.ModuleList(), nn.ModuleList()
        c = widths[0]
        for i, w in enumerate(widths):
            self.blocks.append(TimeResBlock(c, w, t_embed_dim))
            self.down.append(nn.Conv2d(w, w, 3, stride=2, padding=1) if i < len(widths) - 1 else nn.Identity())
            c = w
        self.norm = nn.GroupNorm(_groups(c), c)
        self.head = mlp_to_scalar(c + t_embed_dim, hidden)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time(t)
        h = self.stem(x)
        for block, down in zip(self.blocks, self.down):
            h = down(block(h, temb))
        pooled = nn.functional.mish(self.norm(h)).mean(dim=(2, 3))
        return self.head(torch.cat([pooled, temb], dim=-1)).squeeze(-1)


def build_latent_reward(spec, sample_shape) -> LatentConvReward:
    """The net of a LatentRewardSpec."""
    return LatentConvReward(sample_shape, spec.unet_dim, tuple(spec.unet_dim_mults), spec.t_embed_dim,
                            tuple(spec.hidden))


def build_reward_net(spec: RewardSpec, *sample_shape: int) -> nn.Module:
    """The net of `spec.kind` for samples of `sample_shape`: (horizon, transition_dim) windows, or
    (C, H, W) latents for the image experiment's `latent_conv`."""
    if spec.kind == "latent_conv":
        return build_latent_reward(spec, sample_shape)
    horizon, transition_dim = sample_shape
    if spec.kind == "window_mlp":
        return WindowMLPReward(horizon, transition_dim, spec.model_horizon, spec.hidden, spec.t_embed_dim,
                               spec.input_dims)
    return ValueUNetReward(horizon, transition_dim, spec.unet_dim, spec.unet_dim_mults)


def reward_gradient(net: nn.Module, x: torch.Tensor, t: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """grad_x rho(x, t); with create_graph the result can be differentiated again (training)."""
    with torch.enable_grad():
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        grad, = torch.autograd.grad(net(x, t).sum(), x, create_graph=create_graph)
    return grad


# -- trained rewards, usable outside Ray ------------------------------------------------

KIND = "reward_net"


def alignment_terms(net, batch: dict, device, create_graph: bool, mask: torch.Tensor | None = None):
    """(loss, grad rho, target) for a batch of triples: the relative-reward objective, grad rho(x_next, t) matched
    to x_expert - x_base (docs/method.md), over the entries `mask` (sample-shaped bool, from `loss_mask`) keeps;
    None: every entry the reward sees. Ray-free, so benchmarks/model_rates.py can time it anywhere.

    Left out: the columns a reward does not see (rho is constant along them) and entries fixed by
    inpainting (the start state), whose target is 0 by construction and would pull grad rho to 0 there.
    The grad and target returned are (B, kept entries)."""
    x = batch["x_next"].to(device).requires_grad_(True)
    t = batch["t"].to(device).long()
    target = (batch["x_expert"] - batch["x_base"]).to(device)
    grad = reward_gradient(net, x, t, create_graph=create_graph)
    keep = loss_mask(tuple(x.shape[1:]), getattr(net, "input_dims", None), None, device) if mask is None else mask
    grad, target = grad[:, keep], target[:, keep]
    return F.mse_loss(grad, target), grad, target


def loss_mask(sample_shape: tuple[int, ...], input_dims: list[int] | None, conditioned: torch.Tensor | None,
              device) -> torch.Tensor:
    """The entries of a sample the alignment loss compares: all, less unseen columns and conditioned entries."""
    keep = torch.ones(sample_shape, dtype=torch.bool, device=device)
    if input_dims is not None:
        seen = torch.zeros(sample_shape[-1], dtype=torch.bool, device=device)
        seen[list(input_dims)] = True
        keep &= seen
    if conditioned is not None:
        keep &= torch.as_tensor(conditioned, dtype=torch.bool, device=device)
    return keep


def mean_cosine(grad: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(grad.flatten(1), target.flatten(1), dim=1, eps=1e-12).mean()


def reward_config(spec: RewardSpec, horizon: int, transition_dim: int, normalizer: dict | None) -> dict:
    return sample_reward_config(spec, (horizon, transition_dim), normalizer)


def sample_reward_config(spec: RewardSpec, sample_shape, normalizer: dict | None) -> dict:
    """A reward checkpoint's config for samples of any fixed shape (windows keep horizon/transition_dim)."""
    config = {"kind": KIND, "reward": spec.model_dump(mode="json"), "sample_shape": [int(n) for n in sample_shape],
              "normalizer": normalizer}
    if len(sample_shape) == 2:
        config["horizon"], config["transition_dim"] = (int(n) for n in sample_shape)
    return config


def sample_shape_of(config: dict) -> tuple[int, ...]:
    """The sample shape a reward checkpoint scores (configs before sample_shape: windows)."""
    return tuple(config.get("sample_shape") or (config["horizon"], config["transition_dim"]))


def reward_spec_of(config: dict) -> RewardSpec:
    """The reward spec stored in a checkpoint config, as the model of its kind."""
    if config["reward"].get("kind") == "latent_conv":
        return LatentRewardSpec.model_validate(config["reward"])
    return RewardSpec.model_validate(config["reward"])


class TrainedReward:
    """A trained rho with the normaliser of the windows it scores."""

    def __init__(self, net: nn.Module, config: dict, step: int):
        self.net, self.config, self.step = net.eval(), config, step
        self.sample_shape = sample_shape_of(config)
        self.horizon, self.transition_dim = config.get("horizon"), config.get("transition_dim")

    @property
    def normalizer(self):
        from rrf_ray.data.windows import Normalizer

        return Normalizer.from_dict(self.config["normalizer"]) if self.config.get("normalizer") else None

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """rho(x, t) on normalised windows: differentiable, usable as a sampling guide."""
        return self.net(x, t)

    @torch.no_grad()
    def score(self, x, t: int = 0, batch_size: int = 4096) -> np.ndarray:
        """Rewards of normalised windows (N, H, D) (or samples of any trained shape) at step t, as numpy."""
        device = next(self.net.parameters()).device
        out = []
        for i in range(0, len(x), batch_size):
            xb = torch.as_tensor(np.asarray(x[i:i + batch_size], dtype=np.float32), device=device)
            out.append(self.net(xb, torch.full((len(xb),), t, device=device, dtype=torch.long)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def load_reward(path, use_ema: bool = True, device: str = "cpu") -> TrainedReward:
    """A reward network from a checkpoint directory (or a `ray.train.Checkpoint`)."""
    from rrf_ray.engine.checkpoints import as_directory, read_checkpoint

    with as_directory(path) as d:
        config, state = read_checkpoint(d, KIND)
    net = build_reward_net(reward_spec_of(config), *sample_shape_of(config))
    net.load_state_dict(state["ema" if use_ema else "model"])
    return TrainedReward(net.to(device), config, int(state["step"]))
