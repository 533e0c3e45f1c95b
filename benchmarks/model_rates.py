"""Model-level step rates of a sweep profile on one device, without Ray: what `estimate:` needs.

    python benchmarks/model_rates.py [--device cuda|cpu] [--profile maze2d] [--seconds 10] [--out rates.yaml]
    python benchmarks/model_rates.py --device cpu --profile irl --tiny     # CI: tiny sizes, seconds

For the profile's model sizes (U-Net, horizon, batch, reward net) it times, after a warm-up,
each piece of work that --dry-run's estimate counts:

  diffuser_samples_per_s  diffuser training (DiffusionLoss forward, backward, Adam step)
  reward_samples_per_s    reward alignment: grad rho(x, t) matched to x_expert - x_base (a double backward)
  plans_per_s             guided sampling of whole plans at the rollout batch (locomotion)
  irl_steps_per_s         Algorithm 4 steps: guided sampling differentiated through, at irl.batch_size (irl)

It prints one line per figure and writes them, with the device's name, the date and the
precision, as a YAML block to paste under the profile's `estimate:`. Precision: the training
code's own (engine.precision): fp32, with TF32 matmuls and convolutions on CUDA. bf16 is not
used: the alignment loss compares a gradient with a small difference of two samples, and a
rate measured in a precision the sweep does not run would mislead. Imports no Ray (the GPU
machines this is run on may not have it). The diffuser rate is measured first and again last and
averaged; the last line, RATIO <last / first>, says how steady the machine was meanwhile.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rrf_ray.diffusion.model import DiffusionLoss, TrajectoryDiffuser  # noqa: E402
from rrf_ray.diffusion.spec import DiffusionSpec, GuidanceSpec  # noqa: E402
from rrf_ray.engine.precision import configure_precision  # noqa: E402
from rrf_ray.rrf.reward_nets import alignment_terms, build_reward_net  # noqa: E402

# Observation and action sizes of gymnasium's MuJoCo v5 tasks (the locomotion profiles), so the
# benchmark runs where gymnasium and MuJoCo are not installed.
MUJOCO_DIMS = {"HalfCheetah": (17, 6), "Hopper": (11, 3), "Walker2d": (17, 6), "Ant": (105, 8)}
POINTMAZE_DIMS = (4, 2)  # (x, y, vx, vy), (ax, ay)


def tiny(spec: DiffusionSpec) -> DiffusionSpec:
    return spec.model_copy(update={"dim": 8, "dim_mults": [1, 2], "n_timesteps": 5, "batch_size": 4})


def timed(fn, device: torch.device, seconds: float, warmup: int = 2, min_calls: int = 3) -> float:
    """Calls of `fn` per second, after `warmup` calls, over at least `seconds` and `min_calls`."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        fn()
    sync()
    calls, t0 = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - t0 < seconds:
        fn()
        calls += 1
        if calls % 4 == 0 or calls >= min_calls:
            sync()
    sync()
    return calls / (time.perf_counter() - t0)


def diffuser_rate(spec: DiffusionSpec, horizon: int, obs_dim: int, act_dim: int, device, seconds: float) -> float:
    model = TrajectoryDiffuser(obs_dim + act_dim, act_dim, horizon, spec).to(device)
    loss_module = DiffusionLoss(model, condition_on_start=True)
    opt = torch.optim.Adam(loss_module.parameters(), lr=spec.learning_rate)
    x0 = torch.randn(spec.batch_size, horizon, obs_dim + act_dim, device=device)

    def step():
        loss = loss_module(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return spec.batch_size * timed(step, device, seconds)


def reward_rate(reward_spec, n_timesteps: int, horizon: int, dim: int, device, seconds: float) -> float:
    net = build_reward_net(reward_spec, horizon, dim).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=reward_spec.learning_rate)
    b = reward_spec.batch_size
    batch = {"x_next": torch.randn(b, horizon, dim), "t": torch.randint(0, n_timesteps, (b,)),
             "x_expert": torch.randn(b, horizon, dim), "x_base": torch.randn(b, horizon, dim)}
    batch = {k: v.to(device) for k, v in batch.items()}

    def step():
        loss, _, _ = alignment_terms(net, batch, device, create_graph=True)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return b * timed(step, device, seconds)


def plans_rate(spec: DiffusionSpec, reward_spec, guidance: GuidanceSpec, horizon: int, obs_dim: int, act_dim: int,
               n_plans: int, device, seconds: float) -> float:
    model = TrajectoryDiffuser(obs_dim + act_dim, act_dim, horizon, spec).to(device).eval()
    net = build_reward_net(reward_spec, horizon, obs_dim + act_dim).to(device).eval()
    cond = {0: torch.randn(n_plans, obs_dim, device=device)}
    generator = torch.Generator(device=device).manual_seed(0)
    return n_plans * timed(lambda: model.sample(n_plans, cond, guide=net, guidance=guidance, generator=generator),
                           device, seconds, warmup=1, min_calls=2)


def irl_rate(spec, device, seconds: float, tiny_sizes: bool) -> tuple[float, str]:
    from rrf_ray.irl.reward_net import (
        algorithm4_loss,
        build_irl_reward,
        trajectory_loss,
    )

    irl, horizon = spec.irl, spec.windows.horizon
    diffusion = tiny(spec.diffusion) if tiny_sizes else spec.diffusion
    if tiny_sizes:
        irl = irl.model_copy(update={"batch_size": 4, "hidden": [16], "segment_steps": min(irl.segment_steps, 4)})
        horizon = 8
    obs_dim, act_dim = POINTMAZE_DIMS
    model = TrajectoryDiffuser(obs_dim + act_dim, act_dim, horizon, diffusion).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    net = build_irl_reward(irl, horizon, obs_dim + act_dim).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    metric = irl.metrics[0]
    loss_fn = trajectory_loss(metric, irl.matern_nu)
    segments = torch.randn(irl.batch_size, irl.segment_steps, obs_dim + act_dim, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step():
        loss, _ = algorithm4_loss(model, net, segments, irl, loss_fn, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return timed(step, device, seconds, warmup=1, min_calls=2), metric


def load_profile(name: str):
    """The profile's spec, validated by its experiment's model (imported directly: the registry would import Ray)."""
    from rrf_ray.engine.loading import read_raw, resolve_spec_path  # YAML and `base:` only: no Ray

    path = resolve_spec_path(name)
    raw = read_raw(path)
    experiment = raw.get("experiment", "maze2d")
    if experiment == "maze2d":
        from rrf_ray.maze2d.spec import Maze2DSpec as model
    elif experiment == "locomotion":
        from rrf_ray.locomotion.spec import LocomotionSweepSpec as model
    elif experiment == "irl":
        from rrf_ray.irl.spec import IRLExperimentSpec as model
    else:
        raise SystemExit(f"{path}: experiment {experiment!r} has no model rates here (maze2d, locomotion, irl)")
    return experiment, model.model_validate(raw)


def measure(profile: str, device: torch.device, seconds: float, tiny_sizes: bool) -> tuple[dict, list[str], float]:
    experiment, spec = load_profile(profile)
    rates, notes = {}, []
    diffusion = tiny(spec.diffusion) if tiny_sizes else spec.diffusion
    if experiment == "locomotion":
        env = next(iter(spec.environments))
        obs_dim, act_dim = MUJOCO_DIMS[spec.environments[env].env_id.split("-")[0]]
        horizon = spec.horizon(env)
        notes.append(f"{env} ({spec.environments[env].env_id}): obs {obs_dim}, action {act_dim}, H {horizon}")
    else:
        (obs_dim, act_dim), horizon = POINTMAZE_DIMS, spec.windows.horizon
    horizon = 8 if tiny_sizes else horizon
    notes.append(f"diffuser: U-Net dim {diffusion.dim} x {diffusion.dim_mults}, T {diffusion.n_timesteps}, "
                 f"H {horizon}, batch {diffusion.batch_size}")
    rates["diffuser_samples_per_s"] = diffuser_rate(diffusion, horizon, obs_dim, act_dim, device, seconds)
    if experiment in ("maze2d", "locomotion"):
        reward = spec.reward
        if tiny_sizes:
            reward = reward.model_copy(update={"batch_size": 8, "hidden": [16], "unet_dim": 16,
                                               "unet_dim_mults": [1, 2]})
        notes.append(f"reward: {reward.kind}, batch {reward.batch_size}")
        rates["reward_samples_per_s"] = reward_rate(reward, diffusion.n_timesteps, horizon, obs_dim + act_dim,
                                                    device, seconds)
    if experiment == "locomotion":
        n_plans = 2 if tiny_sizes else spec.rollout.n_envs
        guidance = GuidanceSpec(scale=max(spec.search.omegas), t_stopgrad=min(spec.search.t_stopgrads),
                                n_guide_steps=spec.search.n_guide_steps,
                                scale_grad_by_std=spec.search.scale_grad_by_std)
        notes.append(f"plans: batch {n_plans} (rollout.n_envs), guided at omega {guidance.scale:g}, "
                     f"t_stopgrad {guidance.t_stopgrad}")
        rates["plans_per_s"] = plans_rate(diffusion, reward if tiny_sizes else spec.reward, guidance, horizon,
                                          obs_dim, act_dim, n_plans, device, seconds)
    if experiment == "irl":
        rates["irl_steps_per_s"], metric = irl_rate(spec, device, seconds, tiny_sizes)
        notes.append(f"Algorithm 4: metric {metric}, batch {4 if tiny_sizes else spec.irl.batch_size}, "
                     f"{spec.irl.backprop_steps or diffusion.n_timesteps} differentiable steps")
    again = diffuser_rate(diffusion, horizon, obs_dim, act_dim, device, seconds)  # bracket: was the machine steady?
    drift = again / rates["diffuser_samples_per_s"]
    rates["diffuser_samples_per_s"] = (rates["diffuser_samples_per_s"] + again) / 2
    return rates, notes, drift


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--profile", default="maze2d", help="a sweep name (maze2d, locomotion, irl, ...) or a YAML path")
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per figure, after warm-up")
    p.add_argument("--tiny", action="store_true", help="tiny model sizes: checks the benchmark runs, measures nothing")
    p.add_argument("--out", type=Path, help="write the estimate block as YAML here")
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here (use --device cpu)")
    device = torch.device(args.device)
    torch.manual_seed(0)
    precision = configure_precision(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"

    rates, notes, drift = measure(args.profile, device, args.seconds, args.tiny)
    print(f"profile {args.profile}{' (tiny sizes)' if args.tiny else ''} on {name}, {precision}, "
          f"torch {torch.__version__}")
    for note in notes:
        print(f"  {note}")
    for key, value in rates.items():
        print(f"{key}: {value:,.1f}")
    block = {"device": name + (" (tiny sizes)" if args.tiny else ""), "date": datetime.date.today().isoformat(),
             "precision": precision, **{k: float(f"{v:.4g}") for k, v in rates.items()}}
    text = yaml.safe_dump({"estimate": block}, sort_keys=False)
    print(text, end="")
    if args.out:
        args.out.write_text(text)
        print(f"written to {args.out}")
    print(f"RATIO {drift:.3f}")


if __name__ == "__main__":
    main()
