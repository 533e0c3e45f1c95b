"""The GPU path computes what the CPU path computes: the same tiny training runs, step for step.

Both devices start from the same weights and see the same batches, diffusion steps and noise
(drawn on the CPU), with the training code's own precision settings (engine.precision: TF32 on
CUDA). Runs only where torch sees a CUDA device (skipped elsewhere); needs no Ray, so a GPU
machine without it runs `python -m pytest tests/diffusion/test_cuda.py` as it is.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rrf_ray.diffusion.model import TrajectoryDiffuser
from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec
from rrf_ray.engine.precision import configure_precision
from rrf_ray.rrf.reward_nets import alignment_terms, build_reward_net
from rrf_ray.rrf.spec import RewardSpec

H, OBS, ACT, B, STEPS = 16, 4, 2, 32, 30
# TF32 products carry a 10-bit mantissa (relative error ~5e-4 per product); over 30 Adam steps
# the two runs' losses stay within a few 1e-3 of each other. A wrong device path (a tensor left
# on the CPU's RNG, a missing conditioning, a dropped term) moves them by far more.
LOSS_RTOL = 2e-2


def diffusion_losses(device: str) -> list[float]:
    torch.manual_seed(0)
    spec = DiffusionSpec(n_timesteps=20, dim=16, dim_mults=[1, 2, 4], batch_size=B)
    model = TrajectoryDiffuser(OBS + ACT, ACT, H, spec)
    model = copy.deepcopy(model).to(device)
    configure_precision(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x0 = torch.randn(B, H, OBS + ACT, generator=rng)
        t = torch.randint(0, spec.n_timesteps, (B,), generator=rng)
        noise = torch.randn(B, H, OBS + ACT, generator=rng)
        x0, t, noise = x0.to(device), t.to(device), noise.to(device)
        loss = model.loss(x0, {0: x0[:, 0, ACT:]}, t=t, noise=noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def alignment_losses(device: str) -> list[float]:
    torch.manual_seed(0)
    spec = RewardSpec(kind="value_unet", unet_dim=32, unet_dim_mults=[1, 2], batch_size=B)
    net = build_reward_net(spec, H, OBS + ACT).to(device)
    configure_precision(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(STEPS):
        x_base, x_next = torch.randn(B, H, OBS + ACT, generator=rng), torch.randn(B, H, OBS + ACT, generator=rng)
        batch = {"x_next": x_next, "t": torch.randint(0, 20, (B,), generator=rng), "x_base": x_base,
                 "x_expert": x_base + 0.1 * x_next}  # a learnable target: the gradient of 0.05 |x|^2
        loss, _, _ = alignment_terms(net, {k: v.to(device) for k, v in batch.items()}, device, create_graph=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def guided_plans(device: str) -> np.ndarray:
    torch.manual_seed(0)
    spec = DiffusionSpec(n_timesteps=10, dim=16, dim_mults=[1, 2])
    model = TrajectoryDiffuser(OBS + ACT, ACT, H, spec).eval().to(device)
    net = build_reward_net(RewardSpec(kind="window_mlp", hidden=[32]), H, OBS + ACT).to(device)
    configure_precision(device)
    start = torch.randn(8, OBS, generator=torch.Generator().manual_seed(3)).to(device)
    generator = torch.Generator(device=device).manual_seed(4)
    guidance = GuidanceSpec(scale=0.1, t_stopgrad=2)
    return model.sample(8, {0: start}, guide=net, guidance=guidance, generator=generator).x.cpu().numpy()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU path is checked on one")


@needs_cuda
def test_diffuser_training_on_cuda_matches_cpu():
    cpu, cuda = diffusion_losses("cpu"), diffusion_losses("cuda")
    np.testing.assert_allclose(cuda, cpu, rtol=LOSS_RTOL)
    assert cpu[-1] < cpu[0]  # it trained: the comparison is not between two untouched models


@needs_cuda
def test_reward_alignment_on_cuda_matches_cpu():
    cpu, cuda = alignment_losses("cpu"), alignment_losses("cuda")
    np.testing.assert_allclose(cuda, cpu, rtol=LOSS_RTOL)
    assert cpu[-1] < cpu[0]


@needs_cuda
def test_guided_sampling_on_cuda_is_a_valid_plan_sampler():
    """CUDA's generator draws other noise than the CPU's, so plans differ sample by sample; the
    conditioning and the plans' scale must still agree."""
    cpu, cuda = guided_plans("cpu"), guided_plans("cuda")
    np.testing.assert_allclose(cuda[:, 0, ACT:], cpu[:, 0, ACT:], rtol=0, atol=1e-5)  # inpainted start states
    assert np.isfinite(cuda).all()
    assert 0.5 < cuda.std() / cpu.std() < 2.0
