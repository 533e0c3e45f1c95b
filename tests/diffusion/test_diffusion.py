"""Trajectory diffusers: Ray Train training, resume, inpainting and reward-guided sampling."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from tolerances import assert_float32_close
from toy_trajectories import spread, to_one_point
from train_toy_diffuser import toy_spec

from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.diffusion.checkpoint import load_diffuser
from rrf_ray.diffusion.model import TrajectoryDiffuser
from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec
from rrf_ray.diffusion.train import train_diffuser
from rrf_ray.diffusion.unet import check_horizon
from rrf_ray.engine.spec import ResourceSpec
from rrf_ray.engine.training import NonFiniteLossError

POINT = np.array([0.5, -0.5])
HERE = Path(__file__).resolve().parents[1]  # tests/, where the helper scripts live


@pytest.fixture(scope="module")
def one_point_run(ray_local, tmp_path_factory):
    """A diffuser trained by a real 1-worker Ray Train run on plans that all end at POINT."""
    storage = tmp_path_factory.mktemp("train")
    spec = DiffusionSpec(n_timesteps=20, dim=16, dim_mults=[1, 2], learning_rate=2e-3, batch_size=64,
                         train_steps=600, ema_start=100, ema_every=1, ema_decay=0.99,
                         checkpoint_every=300, log_every=100)
    windows = TrajectoryWindows.from_array(to_one_point(512), action_dim=1)
    result = train_diffuser(windows, spec, ResourceSpec(cpus_per_worker=2), storage, "one_point", seed=0)
    return result


def test_trained_diffuser_reproduces_its_data(one_point_run):
    """Plans from new starts end at POINT.

    Tolerance 0.1: the data's ends are exactly POINT while its starts spread over
    [-0.9, 0.9]^2; an untrained model's ends scatter with std ~1, so 0.1 is a tight fit.
    """
    assert one_point_run.metrics["step"] == 600
    model = load_diffuser(one_point_run.checkpoint)  # outside Ray: a plain object
    assert model.step == 600
    starts = np.random.default_rng(5).uniform(-0.9, 0.9, size=(64, 2)).astype(np.float32)
    plans = model.plan(starts, seed=0)
    assert plans.shape == (64, 16, 3)
    end_error = np.linalg.norm(plans[:, -1, 1:] - POINT, axis=1)
    assert end_error.max() < 0.1, end_error.max()
    # and the straight-line shape: the midpoint lies halfway
    mid = (starts + POINT) / 2
    assert np.abs(plans[:, 7:9, 1:].mean(axis=1) - mid).max() < 0.15


def test_untrained_model_does_not_pass_that_bar():
    """The bar above is not trivially met."""
    spec = DiffusionSpec(n_timesteps=20, dim=16, dim_mults=[1, 2])
    torch.manual_seed(0)
    model = TrajectoryDiffuser(3, 1, 16, spec).eval()
    out = model.sample(64, {0: torch.zeros(64, 2)}, generator=torch.Generator().manual_seed(0)).x
    assert np.linalg.norm(out[:, -1, 1:].numpy() - POINT, axis=1).max() > 0.1


def test_inpainting_fixes_start_and_end_exactly(one_point_run):
    model = load_diffuser(one_point_run.checkpoint)
    rng = np.random.default_rng(1)
    starts = rng.uniform(-0.9, 0.9, size=(16, 2)).astype(np.float32)
    ends = rng.uniform(-0.9, 0.9, size=(16, 2)).astype(np.float32)
    plans, chain = model.plan(starts, end=ends, seed=3, return_chain=True)
    # exact up to the float32 round trip through the normalizer
    assert_float32_close(plans[:, 0, 1:], starts)
    assert_float32_close(plans[:, -1, 1:], ends)
    assert chain.shape == (21, 16, 16, 3)  # x_T ... x_0
    assert_float32_close(model.unnormalize(chain[-1]), plans)


@pytest.fixture(scope="module")
def spread_model():
    """Trained in-process (a sampler test): plans with many possible endpoints."""
    torch.manual_seed(0)
    data = torch.from_numpy(spread(1024))
    spec = DiffusionSpec(n_timesteps=20, dim=16, dim_mults=[1, 2])
    model = TrajectoryDiffuser(3, 1, 16, spec)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(800):
        x = data[torch.randint(0, len(data), (64,))]
        loss = model.loss(x, {0: x[:, 0, 1:]})
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_guidance_moves_endpoints_towards_target(spread_model):
    """rho(x) = -||x_end - q||^2 pulls the mean endpoint towards q, more for larger omega."""
    q = torch.tensor([-0.5, 0.5])
    starts = torch.from_numpy(np.random.default_rng(5).uniform(-0.8, 0.8, (256, 2)).astype(np.float32))

    def rho(x, t):
        return -((x[:, -1, 1:] - q) ** 2).sum(-1)

    def mean_distance(scale):
        g = torch.Generator().manual_seed(0)
        out = spread_model.sample(256, {0: starts}, rho, GuidanceSpec(scale=scale), generator=g).x
        return (out[:, -1, 1:] - q).norm(dim=-1).mean().item()

    d0, d1, d3 = mean_distance(0.0), mean_distance(1.0), mean_distance(3.0)
    assert d0 > d1 > d3, (d0, d1, d3)
    assert d3 < d0 - 0.05


def test_zero_guidance_is_unguided_sampling(spread_model):
    starts = torch.zeros(8, 2)

    def rho(x, t):
        return x.sum(dim=(1, 2))

    a = spread_model.sample(8, {0: starts}, generator=torch.Generator().manual_seed(4)).x
    b = spread_model.sample(8, {0: starts}, rho, GuidanceSpec(scale=0.0), generator=torch.Generator().manual_seed(4)).x
    c = spread_model.sample(8, {0: starts}, rho, GuidanceSpec(scale=0.5), generator=torch.Generator().manual_seed(4)).x
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_t_stopgrad_turns_guidance_off_below_it(spread_model):
    starts = torch.zeros(8, 2)

    def rho(x, t):
        return x.sum(dim=(1, 2))

    unguided = spread_model.sample(8, {0: starts}, generator=torch.Generator().manual_seed(4)).x
    stopped = spread_model.sample(8, {0: starts}, rho, GuidanceSpec(scale=0.5, t_stopgrad=20),
                                  generator=torch.Generator().manual_seed(4)).x
    assert torch.equal(unguided, stopped)  # T = 20: every step is below t_stopgrad


@pytest.mark.parametrize("prediction", ["sample", "epsilon"])
def test_reverse_step_matches_diffusers_scheduler(prediction):
    spec = DiffusionSpec(n_timesteps=20, dim=8, dim_mults=[1, 2], prediction=prediction,
                         clip_denoised=prediction == "sample")
    model = TrajectoryDiffuser(6, 2, 8, spec).eval()
    x = torch.randn(4, 8, 6)
    for step in [0, 7, 19]:
        t = torch.full((4,), step)
        with torch.no_grad():
            out = model(x, t)
            ref = model.scheduler.step(out.transpose(1, 2), step, x.transpose(1, 2),
                                       generator=torch.Generator().manual_seed(0)).prev_sample.transpose(1, 2)
            noise = torch.randn((4, 6, 8), generator=torch.Generator().manual_seed(0)).transpose(1, 2)
            torch.testing.assert_close(model.step(x, t, noise), ref, atol=2e-5, rtol=1e-4)


def test_horizon_must_fit_the_unet():
    with pytest.raises(ValueError, match="horizon 30 must be divisible by 4"):
        check_horizon(30, [1, 2, 4])


@pytest.mark.parametrize("mode", ["local", "workers"])
def test_killed_run_resumes_from_its_checkpoint(ray_local, tmp_path, mode):
    """SIGKILL the driver after a checkpoint; the rebuilt run continues from it, whether it trains
    in local mode (its own LATEST checkpoint) or on a Ray Train worker (Train's checkpoint manager)."""
    storage, name = tmp_path / "storage", "killed"
    marker = storage / name / ("LATEST" if mode == "local" else "checkpoint_manager_snapshot.json")
    proc = subprocess.Popen([sys.executable, str(HERE / "train_toy_diffuser.py"), str(storage), name, "100000", mode],
                            cwd=HERE, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and not marker.exists():
            assert proc.poll() is None, "training process died on its own"
            time.sleep(0.5)
        assert marker.exists(), "no checkpoint within 180 s"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    windows = TrajectoryWindows.from_array(to_one_point(256), action_dim=1)
    # the same run, rebuilt with a finish line at 150 steps
    result = train_diffuser(windows, toy_spec(150), ResourceSpec(local_mode=mode == "local"), storage, name, seed=0)
    resumed = result.metrics["resumed_from_step"]
    assert resumed >= 25 and resumed % 25 == 0
    assert result.metrics["step"] == 150
    assert load_diffuser(result.checkpoint).step == 150


def test_nan_loss_fails_the_run_saying_where(ray_local, tmp_path):
    windows = TrajectoryWindows.from_array(np.full((8, 8, 3), np.nan, np.float32), action_dim=1)
    spec = DiffusionSpec(n_timesteps=5, dim=8, dim_mults=[1, 2], batch_size=4, train_steps=10)
    with pytest.raises(NonFiniteLossError, match=r"\[nan\] diffusion loss is nan at step 0: stopping"):
        train_diffuser(windows, spec, ResourceSpec(), tmp_path, "nan", seed=0)


def test_finished_run_rebuilt_hands_back_its_final_checkpoint(ray_local, tmp_path):
    spec = DiffusionSpec(n_timesteps=5, dim=8, dim_mults=[1, 2], batch_size=8, train_steps=6,
                         checkpoint_every=4, log_every=2)
    windows = TrajectoryWindows.from_array(to_one_point(32), action_dim=1)
    first = train_diffuser(windows, spec, ResourceSpec(), tmp_path, "done", seed=0)
    assert first.metrics["step"] == 6 and first.metrics["resumed_from_step"] == 0
    assert "steady_samples_per_s" in first.metrics
    again = train_diffuser(windows, spec, ResourceSpec(), tmp_path, "done", seed=0)
    assert again.metrics["step"] == 6 and again.metrics["resumed_from_step"] == 6
    assert np.isnan(again.metrics["loss"]) and again.metrics["samples_per_s"] == 0.0
    weights = [load_diffuser(r.checkpoint, use_ema=False).model.state_dict() for r in (first, again)]
    for name, p in weights[0].items():
        assert torch.equal(weights[1][name], p)


def test_two_workers_train_with_ddp(ray_local, tmp_path):
    spec = DiffusionSpec(n_timesteps=5, dim=8, dim_mults=[1, 2], batch_size=16, train_steps=20,
                         checkpoint_every=20, log_every=10)
    windows = TrajectoryWindows.from_array(to_one_point(64), action_dim=1)
    result = train_diffuser(windows, spec, ResourceSpec(num_workers=2, cpus_per_worker=1), tmp_path, "ddp")
    assert result.metrics["step"] == 20 and np.isfinite(result.metrics["loss"])
    assert load_diffuser(result.checkpoint).step == 20


def test_fine_tuning_starts_from_the_given_checkpoint(one_point_run, tmp_path):
    """init_from: the expert starts as a copy of the base. With a vanishing learning rate the
    fine-tuned model still plans like the base; from scratch it would not (see the bar above)."""
    spec = DiffusionSpec(n_timesteps=20, dim=16, dim_mults=[1, 2], learning_rate=1e-12, batch_size=16,
                         train_steps=5, ema_start=10_000, checkpoint_every=5, log_every=5)
    other = TrajectoryWindows.from_array(spread(256), action_dim=1)
    result = train_diffuser(other, spec, ResourceSpec(), tmp_path, "fine_tuned", seed=1,
                            init_from=one_point_run.checkpoint)
    base, tuned = load_diffuser(one_point_run.checkpoint), load_diffuser(result.checkpoint)
    for name, p in base.model.state_dict().items():
        torch.testing.assert_close(tuned.model.state_dict()[name], p, atol=1e-6, rtol=0)
    starts = np.random.default_rng(5).uniform(-0.9, 0.9, size=(32, 2)).astype(np.float32)
    assert np.linalg.norm(tuned.plan(starts, seed=0)[:, -1, 1:] - POINT, axis=1).max() < 0.1


def test_fine_tuning_refuses_another_window_shape(one_point_run, tmp_path):
    windows = TrajectoryWindows.from_array(np.zeros((8, 32, 3), np.float32), action_dim=1)
    spec = DiffusionSpec(n_timesteps=20, dim=16, dim_mults=[1, 2], train_steps=1)
    with pytest.raises(ValueError, match="cannot fine-tune"):
        train_diffuser(windows, spec, ResourceSpec(), tmp_path, "bad", init_from=one_point_run.checkpoint)


def test_adam_helper_takes_plain_adams_steps():
    """rrf_ray's trainers use the fused Adam kernel where torch has it: the same training as
    torch's default Adam, to rounding. Not bit for bit: a conv bias just before a GroupNorm has a
    ~1e-8 gradient, so its Adam step follows rounding noise, and the runs drift apart as much as
    two plain Adams whose eps differ by 0.01% (measured: outputs 0.9% of what training moved)."""
    from rrf_ray.engine.checkpoints import adam

    torch.manual_seed(0)
    spec = DiffusionSpec(n_timesteps=10, dim=8, dim_mults=[1, 2])
    fast, plain = TrajectoryDiffuser(3, 1, 8, spec), TrajectoryDiffuser(3, 1, 8, spec)
    plain.load_state_dict(fast.state_dict())
    optimizers = adam(fast.parameters(), 1e-2), torch.optim.Adam(plain.parameters(), lr=1e-2)
    x0, x, t = torch.randn(16, 8, 3), torch.randn(4, 8, 3), torch.tensor([0, 3, 6, 9])
    before = plain(x, t).detach()
    for _ in range(10):
        losses = []
        for model, optimizer in zip((fast, plain), optimizers):
            optimizer.zero_grad()
            loss = model.loss(x0, generator=torch.Generator().manual_seed(1))
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 5e-3 * losses[1]
    with torch.no_grad():
        moved = (plain(x, t) - before).abs().max()
        assert (fast(x, t) - plain(x, t)).abs().max() <= 0.05 * moved  # trained alike, far more than they differ


@pytest.mark.parametrize("grad_at", ["x_t", "base_mean"])
def test_mean_shift_guidance_moves_the_step_mean_by_grad_rho_once(grad_at):
    """form mean_shift: x_{t-1} = mu(x_t) + scale * grad rho + std * z (the expert step the relative reward
    implies), grad rho taken at x_t or at the base mean; Janner's form moves x_t first and is another step."""
    torch.manual_seed(0)
    model = TrajectoryDiffuser(3, 1, 8, DiffusionSpec(n_timesteps=10, dim=8, dim_mults=[1, 2])).eval()
    weights = torch.randn(8, 3)
    points = []

    def rho(x, t):  # a reward whose gradient depends on where it is taken: 0.5 * sum(w * x^2)
        points.append(x.detach().clone())
        return 0.5 * (weights * x ** 2).sum(dim=(1, 2))

    x = torch.randn(4, 8, 3)
    cond = {0: torch.zeros(4, 2)}
    guidance = GuidanceSpec(scale=0.7, form="mean_shift", grad_at=grad_at, n_guide_steps=3)
    got = model.reverse_step(x, 5, cond, rho, guidance, torch.Generator().manual_seed(1))
    t = torch.full((4,), 5)
    mean, std = model.posterior(x, t)
    at = x if grad_at == "x_t" else mean.clone()
    at[:, 0, 1:] = 0.0 if grad_at == "base_mean" else at[:, 0, 1:]
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    want = mean + 0.7 * weights * at + std * noise
    want[:, 0, 1:] = 0.0
    torch.testing.assert_close(got, want)
    assert len(points) == 1  # once per step, whatever n_guide_steps says
    janner = model.reverse_step(x, 5, cond, rho, guidance.model_copy(update={"form": "janner"}),
                                torch.Generator().manual_seed(1))
    assert not torch.allclose(janner, got)
