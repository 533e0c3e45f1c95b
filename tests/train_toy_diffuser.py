"""Run by test_diffusion as a separate driver process, so the test can SIGKILL it mid-run."""

import sys

import ray
from toy_trajectories import to_one_point

from rrf_ray.data.windows import TrajectoryWindows
from rrf_ray.diffusion.spec import DiffusionSpec
from rrf_ray.diffusion.train import train_diffuser
from rrf_ray.engine.spec import ResourceSpec


def toy_spec(steps: int) -> DiffusionSpec:
    return DiffusionSpec(n_timesteps=10, dim=8, dim_mults=[1, 2], batch_size=32, train_steps=steps,
                         checkpoint_every=25, log_every=25, ema_start=0)


if __name__ == "__main__":
    storage, name, steps, local_mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "local"
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    windows = TrajectoryWindows.from_array(to_one_point(256), action_dim=1)
    train_diffuser(windows, toy_spec(steps), ResourceSpec(local_mode=local_mode), storage, name, seed=0)
