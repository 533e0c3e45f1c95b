"""Janner's temporal U-Net, as diffusers' `UNet1DModel` port of it.

DownResnetBlock1D / UpResnetBlock1D / MidResTemporalBlock1D with Mish activations and a
positional timestep embedding: `dim * dim_mults` channels per level, the horizon halved
between levels.
"""

from __future__ import annotations

from diffusers import UNet1DModel


def check_horizon(horizon: int, dim_mults: list[int]) -> None:
    factor = 2 ** (len(dim_mults) - 1)
    if horizon % factor:
        raise ValueError(
            f"horizon {horizon} must be divisible by {factor}: the U-Net halves it "
            f"{len(dim_mults) - 1} times (dim_mults {dim_mults})"
        )


def temporal_unet(transition_dim: int, horizon: int, dim: int = 32, dim_mults=(1, 4, 8)) -> UNet1DModel:
    """A U-Net over (batch, transition_dim, horizon) with a timestep input."""
    check_horizon(horizon, list(dim_mults))
    channels = tuple(dim * m for m in dim_mults)
    groups = min(8, dim)
    return UNet1DModel(
        sample_size=horizon,
        in_channels=transition_dim,
        out_channels=transition_dim,
        extra_in_channels=0,
        time_embedding_type="positional",
        flip_sin_to_cos=False,
        use_timestep_embedding=True,
        freq_shift=1,
        down_block_types=("DownResnetBlock1D",) * len(channels),
        up_block_types=("UpResnetBlock1D",) * (len(channels) - 1),
        mid_block_type="MidResTemporalBlock1D",
        out_block_type="OutConv1DBlock",
        block_out_channels=channels,
        act_fn="mish",
        norm_num_groups=groups,
        layers_per_block=1,
        downsample_each_block=False,
    )
