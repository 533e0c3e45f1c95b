"""Local Minari datasets of the locomotion sweep -> windows of [action | observation].

Base and expert data are user-provided local Minari datasets (D4RL's cannot be downloaded
through Minari; `python -m rrf_ray.data d4rl-hdf5` converts the HDF5 files most researchers
have). A sweep checks every id before any work and fails with a message naming the missing
ids and both ways to provide them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from rrf_ray.data.minari_io import DatasetError, dataset_dir, datasets_root
from rrf_ray.data.sac import KINDS as SAC_KINDS, dataset_id
from rrf_ray.data.windows import Normalizer, TrajectoryWindows, load_windows
from rrf_ray.locomotion.spec import LocomotionSweepSpec

ROLES = ("base", "expert")


def root_of(spec: LocomotionSweepSpec) -> Path:
    return datasets_root(spec.datasets_root)


def dataset_of(spec: LocomotionSweepSpec, env: str, role: str) -> str:
    e = spec.environments[env]
    return e.base_dataset if role == "base" else e.expert_dataset


def _present(did: str, root: Path) -> bool:
    return (dataset_dir(did, root) / "data" / "metadata.json").exists()


def missing_datasets_message(spec: LocomotionSweepSpec) -> str | None:
    """None when every dataset is there; else what is missing and how to provide it."""
    root = root_of(spec)
    missing = [(env, role, dataset_of(spec, env, role)) for env in spec.environments for role in ROLES
               if not _present(dataset_of(spec, env, role), root)]
    if not missing:
        return None
    lines = [f"missing local Minari dataset(s) under {root}:"]
    lines += [f"  {env} {role}: {did!r} (for {spec.environments[env].env_id})" for env, role, did in missing]
    made_here = sorted({spec.environments[env].env_id for env, _, did in missing
                        if did in {dataset_id(spec.environments[env].env_id, kind) for kind in SAC_KINDS}})
    if made_here:  # the ids `python -m rrf_ray.data sac` writes
        lines += ["Make the SAC datasets here (pip install -e '.[rl]'; see the profile's header for --steps):",
                  f"  python -m rrf_ray.data sac {' '.join(made_here)} --root {root}"]
    lines += [("Or provide" if made_here else "Provide") + " each one in either of two ways:",
              "  1. convert a D4RL HDF5 file (e.g. halfcheetah_medium_replay-v2.hdf5) into it:"]
    lines += [f"       python -m rrf_ray.data d4rl-hdf5 FILE.hdf5 --id {did} --env {spec.environments[env].env_id} "
              f"--root {root}" for env, _, did in missing]
    lines += ["  2. or put an existing local Minari dataset of that id under the Minari root: set "
              "`datasets_root` in the sweep spec (or --set datasets_root=DIR, or MINARI_DATASETS_PATH) to "
              "the directory that holds it, or change the ids in `environments`."]
    return "\n".join(lines)


def check_datasets(spec: LocomotionSweepSpec) -> None:
    """Raise DatasetError before any work if a dataset is missing or does not fit its environment."""
    message = missing_datasets_message(spec)
    if message:
        raise DatasetError(message)
    import gymnasium as gym
    from minari import MinariDataset

    root = root_of(spec)
    for env, e in spec.environments.items():
        g = gym.make(e.env_id)
        try:
            for role in ROLES:
                did = dataset_of(spec, env, role)
                ds = MinariDataset(dataset_dir(did, root) / "data")
                if ds.observation_space.shape != g.observation_space.shape or \
                        ds.action_space.shape != g.action_space.shape:
                    raise DatasetError(f"{env} {role} dataset {did!r}: observations {ds.observation_space.shape} "
                                       f"and actions {ds.action_space.shape} do not fit {e.env_id} "
                                       f"({g.observation_space.shape}, {g.action_space.shape})")
        finally:
            g.close()


def dataset_fingerprint(did: str, root) -> str:
    """Content hash of a local Minari dataset's files (so artifact keys follow the data)."""
    h = hashlib.sha256()
    base = dataset_dir(did, root)
    for f in sorted(p for p in base.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(base)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def data_scores(spec: LocomotionSweepSpec) -> dict:
    """How good each environment's base and expert data are, on the rollouts' scale: the
    D4RL-normalised return of every episode's first `rollout.max_steps` steps (the rollouts'
    length), mean ± standard error over episodes. Table 1 shows them beside the planners."""
    from rrf_ray.data.windows import open_dataset
    from rrf_ray.locomotion.rollouts import d4rl_score
    from rrf_ray.metrics.intervals import standard_error

    root, steps, out = root_of(spec), spec.rollout.max_steps, {}
    for env, e in spec.environments.items():
        out[env] = {}
        for role in ROLES:
            ds = open_dataset(dataset_of(spec, env, role), root)
            returns = np.array([float(np.sum(ep.rewards[:steps])) for ep in ds.iterate_episodes()])
            scores = d4rl_score(returns, *e.reference_scores)
            out[env][role] = {"episodes": len(returns), "steps": steps, "return_mean": float(returns.mean()),
                              "score": float(scores.mean()), "score_se": standard_error(scores)}
    return out


def env_windows(spec: LocomotionSweepSpec, env: str, role: str, split: str = "train",
                normalizer: Normalizer | str = "standard") -> TrajectoryWindows:
    """Contiguous windows of H steps of [action | observation], normalised by mean/std."""
    w = spec.windows_of(env)
    return load_windows(dataset_of(spec, env, role), w.horizon, w.stride, split=split, root=root_of(spec),
                        normalizer=normalizer, pad_end=w.pad_end)


def fit_normalizer(spec: LocomotionSweepSpec, env: str) -> Normalizer:
    """Mean/std over the training rows of base and expert together: one space for both models."""
    rows = []
    for role in ROLES:
        w = env_windows(spec, env, role, "train")
        rows.append(w.normalizer.unnormalize(w.rows))
    return Normalizer.fit(np.concatenate(rows), kind="standard")
