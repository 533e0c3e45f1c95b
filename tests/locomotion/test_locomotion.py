"""Locomotion steering (docs/locomotion.md) on real HalfCheetah-v5 data, real Minari, real Ray.

The tests make two tiny local Minari datasets themselves: the base from a random policy
(written with minari.create_dataset_from_buffers), the expert from a scripted gait that runs
forwards (written as a D4RL-layout HDF5 file and converted by rrf_ray's D4RL converter).
"""

import contextlib
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import h5py
import matplotlib.image as mpimg
import numpy as np
import pytest
import ray
import torch

from rrf_ray.data.minari_io import minari_root
from rrf_ray.diffusion.checkpoint import load_diffuser
from rrf_ray.diffusion.model import TrajectoryDiffuser
from rrf_ray.diffusion.spec import GuidanceSpec
from rrf_ray.engine.cli import main as sweep_main
from rrf_ray.engine.loading import load_spec
from rrf_ray.engine.storage import SweepStorage
from rrf_ray.locomotion.datasets import env_windows
from rrf_ray.locomotion.discriminator import load_discriminator, log_sigmoid_guide
from rrf_ray.locomotion.rollouts import d4rl_score
from rrf_ray.locomotion.spec import LocomotionSweepSpec
from rrf_ray.locomotion.stages import model_key, read_fingerprints
from rrf_ray.data.d4rl import convert_d4rl_hdf5
from rrf_ray.rrf.reward_nets import ValueUNetReward

BASE_ID, EXPERT_ID = "rrf-test/halfcheetah-random-v0", "rrf-test/halfcheetah-gait-v0"
N_EPISODES, EPISODE_STEPS = 8, 60
VELOCITY = 8  # HalfCheetah-v5 observation index of the forward (x) velocity
# An open-loop gait found by a small random search: about +60 return per 100 steps, where a
# uniformly random policy loses about 30.
GAIT_FREQ, GAIT_PHASE = 0.565, np.array([3.049, 6.162, 6.042, 4.554, 3.401, 1.74])


def _episodes(policy: str, seed: int):
    env = gym.make("HalfCheetah-v5")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(N_EPISODES):
        obs, _ = env.reset(seed=seed * 100 + i)
        observations, actions, rewards = [obs], [], []
        t0 = rng.integers(0, 20)
        for t in range(EPISODE_STEPS):
            if policy == "random":
                a = rng.uniform(-1, 1, 6)
            else:
                a = np.clip(np.sin(GAIT_FREQ * (t + t0) + GAIT_PHASE) + rng.normal(0, 0.1, 6), -1, 1)
            obs, r, *_ = env.step(a.astype(np.float32))
            observations.append(obs)
            actions.append(a)
            rewards.append(r)
        out.append((np.asarray(observations), np.asarray(actions, np.float32), np.asarray(rewards)))
    env.close()
    return out


def _write_minari(did: str, episodes, root: Path) -> None:
    import minari
    from minari.data_collector import EpisodeBuffer

    n = EPISODE_STEPS
    buffers = [EpisodeBuffer(observations=o.astype(np.float64), actions=a, rewards=r,
                             terminations=np.zeros(n, bool), truncations=np.r_[np.zeros(n - 1, bool), True])
               for o, a, r in episodes]
    with minari_root(root), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Minari asks for an author and so on
        minari.create_dataset_from_buffers(did, buffers, env=gym.make("HalfCheetah-v5"), algorithm_name="random")


def _write_d4rl_hdf5(path: Path, episodes) -> None:
    cols = {k: [] for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")}
    for o, a, r in episodes:
        cols["observations"].append(o[:-1])
        cols["next_observations"].append(o[1:])
        cols["actions"].append(a)
        cols["rewards"].append(r)
        cols["terminals"].append(np.zeros(len(a), bool))
        cols["timeouts"].append(np.r_[np.zeros(len(a) - 1, bool), True])
    with h5py.File(path, "w") as f:
        for k, v in cols.items():
            f.create_dataset(k, data=np.concatenate(v))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """The two tiny datasets under a fresh Minari root; returns (root, base episodes, expert episodes)."""
    root = tmp_path_factory.mktemp("loco-minari")
    base, expert = _episodes("random", 0), _episodes("gait", 1)
    _write_minari(BASE_ID, base, root)
    _write_d4rl_hdf5(root.parent / "gait.hdf5", expert)
    convert_d4rl_hdf5(root.parent / "gait.hdf5", EXPERT_ID, "HalfCheetah-v5", root=root)
    return root, base, expert


def sweep_cli(*args) -> subprocess.CompletedProcess:
    """`python -m rrf_ray.sweep ARGS` in this process (its main(), exit code and both streams): a
    dry run or a refused spec starts no Ray, and a fresh interpreter per call cost ~4 s of imports."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = sweep_main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


# -- fast ---------------------------------------------------------------------------------

def test_the_scripted_expert_runs_forward_faster_than_the_random_base(datasets):
    _, base, expert = datasets
    velocity = [np.mean([o[1:, VELOCITY].mean() for o, _, _ in eps]) for eps in (base, expert)]
    returns = [np.mean([r.sum() for _, _, r in eps]) for eps in (base, expert)]
    assert velocity[1] > velocity[0] + 0.3 and returns[1] > returns[0] + 20


def test_missing_dataset_fails_before_any_work_naming_ids_and_both_ways(tmp_path):
    r = sweep_cli("locomotion-tiny", "--storage", tmp_path / "results", "--set", f"datasets_root={tmp_path / 'none'}")
    assert r.returncode == 2, r.stderr[-2000:]
    assert BASE_ID in r.stderr and EXPERT_ID in r.stderr
    assert "python -m rrf_ray.data d4rl-hdf5" in r.stderr and "--env HalfCheetah-v5" in r.stderr  # way 1
    assert "datasets_root" in r.stderr and "MINARI_DATASETS_PATH" in r.stderr  # way 2
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "results").exists()  # nothing was written: no work started
    assert "rrf_ray.data sac" not in r.stderr  # the tiny profile's datasets are not SAC's
    r = sweep_cli("locomotion-cpu-hopper", "--storage", tmp_path / "results", "--set",
                  f"datasets_root={tmp_path / 'none'}")
    assert r.returncode == 2 and "rrf/hopper-sac-replay-v0" in r.stderr, r.stderr[-2000:]
    assert f"python -m rrf_ray.data sac Hopper-v5 --root {tmp_path / 'none'}" in r.stderr  # SAC's ids: made here


def test_specs_validate_and_the_paper_profile_dry_runs():
    paper = load_spec("locomotion")
    assert isinstance(paper, LocomotionSweepSpec)
    assert paper.horizon("halfcheetah") == 4 and paper.horizon("hopper") == 32
    assert paper.reward_of("walker2d").learning_rate == 1e-3
    assert paper.environments["hopper"].reference_scores == (-20.272305, 3234.3)
    r = sweep_cli("locomotion", "--dry-run")
    assert r.returncode == 0, r.stderr
    # 3 envs x 2 steered methods x 7 omegas x 6 t_stopgrads x 4 selection seeds; 3 envs x 3 methods x 4 report seeds
    assert "1008 selection trials + 36 report trials" in r.stdout
    r = sweep_cli("locomotion-tiny", "--dry-run", "--set", "reward.kind=window_mlp")
    assert r.returncode == 2 and "value_unet" in r.stderr
    r = sweep_cli("locomotion-tiny", "--dry-run", "--set", "search.t_stopgrads=[5]")
    assert r.returncode == 2 and "t_stopgrads" in r.stderr
    r = sweep_cli("locomotion-tiny", "--dry-run", "--set", "seeds=[0, 1]")  # model seeds: every model twice
    assert r.returncode == 0 and "6 Ray Train runs" in r.stdout and "8 selection trials + 6 report trials" in r.stdout
    r = sweep_cli("locomotion-tiny", "--dry-run", "--set", "seeds=[0, 1]", "--set", "transfer_seeds=[9]")
    # + a base diffuser of seed 9; + its unsteered and 2 model seeds x 2 steered methods on report seed 1
    assert r.returncode == 0 and "7 Ray Train runs" in r.stdout and "8 selection trials + 11 report trials" in r.stdout
    r = sweep_cli("locomotion-tiny", "--dry-run", "--set", "search.omegas=[0.0, 0.5]")
    assert r.returncode == 2 and "search.omegas" in r.stderr and "unsteered" in r.stderr
    r = sweep_cli("locomotion-tiny", "--dry-run", "--set", "search.report_seeds=[0]")
    assert r.returncode == 2 and "share [0]" in r.stderr and "fresh" in r.stderr
    assert d4rl_score([-280.178953, 12135.0], -280.178953, 12135.0).tolist() == [0.0, 100.0]
    # the CPU profiles of Hopper and Walker2d: locomotion-cpu with HalfCheetah swapped out (null removes it)
    for name, env in (("locomotion-cpu-hopper", "hopper"), ("locomotion-cpu-walker2d", "walker2d")):
        cpu = load_spec(name)
        assert list(cpu.environments) == [env] and cpu.horizon(env) == 8 and cpu.transfer_seeds == [1]
        assert cpu.diffusion == load_spec("locomotion-cpu").diffusion
        assert cpu.reward_of(env) == load_spec("locomotion-cpu").reward_of("halfcheetah")  # one reward setting for all


def test_discriminator_guidance_is_the_gradient_of_log_sigmoid_d():
    torch.manual_seed(0)
    horizon, dim, action_dim = 4, 23, 6
    net = ValueUNetReward(horizon, dim, dim=8, dim_mults=(1, 2, 4)).eval()
    x = torch.randn(5, horizon, dim)
    t = torch.tensor([0, 1, 2, 3, 4])
    xg = x.clone().requires_grad_(True)
    logits = net(xg, t)
    grad_d, = torch.autograd.grad(logits.sum(), xg)
    expected = (1 - torch.sigmoid(logits.detach()))[:, None, None] * grad_d  # d/dx log sigma(D)
    # what the planner adds at one guided step: omega * posterior variance * grad log sigma(D)
    from rrf_ray.diffusion.spec import DiffusionSpec

    model = TrajectoryDiffuser(dim, action_dim, horizon, DiffusionSpec(n_timesteps=5, dim=8, dim_mults=[1, 2]))
    guidance = GuidanceSpec(scale=0.7, n_guide_steps=1, t_stopgrad=0, scale_grad_by_std=True)
    moved = model._guide(x, t, log_sigmoid_guide(net), guidance, cond=None)
    var = model.posterior_var[t].view(-1, 1, 1)
    torch.testing.assert_close(moved - x, 0.7 * var * expected, rtol=1e-4, atol=1e-6)


# -- end to end -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sweep(datasets, tmp_path_factory, ray_local):
    """`python -m rrf_ray.sweep locomotion-tiny` end to end, on this session's Ray."""
    root = datasets[0]
    storage = tmp_path_factory.mktemp("loco-results")
    address = ray.get_runtime_context().gcs_address
    r = subprocess.run([sys.executable, "-m", "rrf_ray.sweep", "locomotion-tiny", "--storage", str(storage),
                        "--address", address, "--set", f"datasets_root={root}", "--set", "transfer_seeds=[9]"],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    return storage / "locomotion-tiny"


def _result(sweep_dir: Path, tid: str) -> dict:
    return json.loads((sweep_dir / "trials" / tid / "result.json").read_text())


@pytest.mark.slow
def test_tiny_profile_runs_end_to_end_and_writes_table_and_plot(tiny_sweep):
    report = (tiny_sweep / "report.md").read_text()
    assert "| Environment | Base data | Unsteered | Discriminator | Relative reward (ours) |" in report
    assert "## Protocol" in report and "selection seeds [0]" in report and "report seeds [1]" in report
    row = next(line for line in report.splitlines() if line.startswith("| halfcheetah |"))
    assert row.count("±") == 2 and row.count("[") == 3 and "30.38 / 30.41 / 31.65" in row  # data ±, methods [CI]
    # the data columns: each dataset's episodes scored over the rollouts' 8 steps
    data = json.loads((tiny_sweep / "data_scores.json").read_text())["halfcheetah"]
    for role, episodes in (("base", _episodes("random", 0)), ("expert", _episodes("gait", 1))):
        expected = d4rl_score([r[:8].sum() for _, _, r in episodes], -280.178953, 12135.0)
        assert data[role]["steps"] == 8 and data[role]["episodes"] == N_EPISODES
        assert data[role]["score"] == pytest.approx(expected.mean())
    cells = [c.strip() for c in row.split("|")]
    assert cells[2] == f"{data['base']['score']:.2f} ± {data['base']['score_se']:.2f}"
    assert cells[6] == f"{data['expert']['score']:.2f} ± {data['expert']['score_se']:.2f}"
    lines = (tiny_sweep / "results.csv").read_text().splitlines()
    # 4 selection + 3 report trials + 3 on the transfer base (unsteered, each steered method's choice)
    assert len(lines) == 1 + 4 + 3 + 3 and all(",ok," in line for line in lines[1:])
    assert mpimg.imread(tiny_sweep / "figures" / "score_vs_omega.png").shape[0] > 100
    tune_results = list((tiny_sweep / "stage5-report-rollouts").rglob("result.json"))
    assert any('"score"' in p.read_text() for p in tune_results)  # scores reached Tune
    for tid in ("halfcheetah-unsteered-model0-report1", "halfcheetah-rrf-w0.5-ts1-model0-selection0"):
        m = _result(tiny_sweep, tid)["metrics"]
        assert m["n_episodes"] == 2 and np.isfinite(m["score"])
        assert m["length_mean"] == 8  # HalfCheetah never terminates early
    # the report trials are exactly each steered method's setting chosen on the selection rollouts
    from rrf_ray.locomotion.report import load_results
    from rrf_ray.locomotion.selection import chosen_settings

    chosen = chosen_settings(load_results(tiny_sweep)[0])
    for method in ("rrf", "discriminator"):
        c = chosen["halfcheetah", method, 0]
        sel = [_result(tiny_sweep, f"halfcheetah-{method}-w{w:g}-ts1-model0-selection0")["metrics"]["score"]
               for w in (0.5, 2.0)]
        assert c.omega == (0.5, 2.0)[int(np.argmax(sel))]
        assert (tiny_sweep / "trials" / f"halfcheetah-{method}-w{c.omega:g}-ts1-model0-report1").is_dir()
        assert not (tiny_sweep / "trials" / f"halfcheetah-{method}-w{2.5 - c.omega:g}-ts1-model0-report1").exists()
        # the same choice steers the transfer base (seed 9), on the same report seed
        moved = _result(tiny_sweep, f"halfcheetah-{method}-w{c.omega:g}-ts1-model0-base9-transfer1")
        assert moved["base_seed"] == 9 and np.isfinite(moved["metrics"]["score"])
    # base 9 is another diffuser: on the same starts and noise its unsteered plans score differently
    own = _result(tiny_sweep, "halfcheetah-unsteered-model0-report1")["metrics"]["scores"]
    other = _result(tiny_sweep, "halfcheetah-unsteered-model9-transfer1")["metrics"]["scores"]
    assert len(own) == len(other) == 2 and own != other
    assert "## Transfer to base diffusers of other seeds" in report and "| halfcheetah | 9 | rrf | 0 |" in report


@pytest.mark.slow
def test_omega_zero_gives_exactly_the_unsteered_rollouts_for_the_same_seed(tiny_sweep, datasets):
    """Library level (a steered grid holds no omega 0): the trained reward at scale 0 reproduces the
    unsteered rollouts of the same seed exactly, so report rollouts pair episode by episode; 0.5 differs."""
    from rrf_ray.locomotion.rollouts import guidance_spec, rollout
    from rrf_ray.locomotion.stages import reward_key
    from rrf_ray.rrf.reward_nets import load_reward

    spec = load_spec("locomotion-tiny", [f"datasets_root={datasets[0]}"])
    fingerprints = read_fingerprints(SweepStorage(tiny_sweep.parent, spec.name))
    planner = load_diffuser(tiny_sweep / "artifacts" / "diffusers" / model_key(spec, "halfcheetah", "base",
                                                                                 fingerprints, 0))
    reward = load_reward(tiny_sweep / "artifacts" / "rewards" / reward_key(spec, "halfcheetah", fingerprints, 0))
    refs = spec.environments["halfcheetah"].reference_scores

    def scores(omega):
        guide = None if omega is None else reward
        return rollout(planner, "HalfCheetah-v5", 2, 6, seed=3, ref_scores=refs, guide=guide,
                       guidance=guidance_spec(omega or 0.0, 1, 1, True)).scores.tolist()

    unsteered = scores(None)
    assert scores(0.0) == unsteered
    assert scores(0.5) != unsteered


@pytest.mark.slow
def test_analytic_reward_steers_the_trained_base_planner_forwards(tiny_sweep, datasets):
    """Guiding the trained base diffuser by the planned forward velocity raises it in the plans."""
    spec = load_spec("locomotion-tiny", [f"datasets_root={datasets[0]}"])
    storage = SweepStorage(tiny_sweep.parent, spec.name)
    key = model_key(spec, "halfcheetah", "base", read_fingerprints(storage), 0)
    planner = load_diffuser(tiny_sweep / "artifacts" / "diffusers" / key)
    column = planner.model.action_dim + VELOCITY
    held = env_windows(spec, "halfcheetah", "base", "all", planner.normalizer)
    starts = planner.normalizer.unnormalize(held.batch(np.arange(0, len(held), 4))[:, 0])[:, planner.model.action_dim:]

    def forward_velocity(x, t):  # normalised windows: mean planned velocity (a monotone map of m/s)
        return x[:, 1:, column].mean(dim=1)

    planned = {}
    for omega in (0.0, 2.0):
        guidance = GuidanceSpec(scale=omega, n_guide_steps=2, t_stopgrad=0, scale_grad_by_std=False)
        plans = planner.plan(starts, guide=forward_velocity, guidance=guidance, seed=0)
        planned[omega] = plans[:, 1:, column].mean()
    std = float(planner.normalizer.scale[column])
    assert planned[2.0] > planned[0.0] + 0.5 * std, planned


@pytest.mark.slow
def test_trained_discriminator_guides_by_grad_log_sigmoid(tiny_sweep, datasets):
    spec = load_spec("locomotion-tiny", [f"datasets_root={datasets[0]}"])
    storage = SweepStorage(tiny_sweep.parent, spec.name)
    key = model_key(spec, "halfcheetah", "discriminator", read_fingerprints(storage), 0)
    disc = load_discriminator(tiny_sweep / "artifacts" / "discriminators" / key)
    base = env_windows(spec, "halfcheetah", "base", "all", load_diffuser(
        tiny_sweep / "artifacts" / "diffusers" / model_key(spec, "halfcheetah", "base", read_fingerprints(storage), 0)
    ).normalizer)
    x = torch.as_tensor(base.batch(np.arange(8))).requires_grad_(True)
    t = torch.full((8,), 2)
    g, = torch.autograd.grad(disc.guide()(x, t).sum(), x)
    x2 = x.detach().requires_grad_(True)
    logits = disc.logits(x2, t)
    d, = torch.autograd.grad(logits.sum(), x2)
    torch.testing.assert_close(g, (1 - torch.sigmoid(logits.detach()))[:, None, None] * d)
