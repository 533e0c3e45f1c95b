"""A convolutional reward rho(x, t) on latents (B, C, H, W), with t conditioning.

A small U-Net encoder: residual conv blocks (GroupNorm, Mish) whose features are shifted
by an embedding of t, halving the resolution between levels, then global average pooling
and an MLP head to a scalar. Smooth activations throughout: training differentiates
grad_x rho again.
"""

from __future__ import annotations

import torch
from torch import nn

from rrf_ray.rrf.reward_nets import SinusoidalTimeEmbedding


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
        layers, width = [], c + t_embed_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Mish()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time(t)
        h = self.stem(x)
        for block, down in zip(self.blocks, self.down):
            h = down(block(h, temb))
        pooled = nn.functional.mish(self.norm(h)).mean(dim=(2, 3))
        return self.head(torch.cat([pooled, temb], dim=-1)).squeeze(-1)


def build_latent_reward(spec, sample_shape) -> LatentConvReward:
    """The net of an ImageRewardSpec (reached from rrf_ray.rrf.reward_nets.build_reward_net)."""
    return LatentConvReward(sample_shape, spec.unet_dim, tuple(spec.unet_dim_mults), spec.t_embed_dim,
                            tuple(spec.hidden))
