"""Local Minari datasets on disk: where they live, their metadata, atomic replacement, held-out episodes.

Shared by every experiment that reads or writes trajectories as Minari datasets. A
dataset is built under a temporary directory next to its final place and swapped into
place only when complete, so a crash never leaves a half-written dataset that a later run
would trust.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
import warnings
from pathlib import Path

import numpy as np

HELDOUT_KEY = "rrf_heldout_episodes"


class DatasetError(ValueError):
    """A dataset that is missing, foreign, or generated from another spec; CLIs exit 2."""


def datasets_root(root: str | os.PathLike | None = None) -> Path:
    """`root`, else MINARI_DATASETS_PATH, else Minari's default (~/.minari/datasets)."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser().resolve() if env else Path.home() / ".minari" / "datasets"


def dataset_dir(did: str, root=None) -> Path:
    return datasets_root(root) / did


def read_metadata(did: str, root=None) -> dict | None:
    path = dataset_dir(did, root) / "data" / "metadata.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


@contextlib.contextmanager
def minari_root(path: Path):
    """Minari reads its root from MINARI_DATASETS_PATH on every call: point it at `path` for a while."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def swap_into_place(built: Path, final: Path) -> None:
    """Rename the finished dataset over `final` (moving any old one aside first)."""
    trash = None
    if final.exists():
        trash = final.parent / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
        os.replace(final, trash)
    os.replace(built, final)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def building(did: str, root=None):
    """A fresh directory in which Minari builds dataset `did` (MINARI_DATASETS_PATH points there
    meanwhile): swapped into the dataset's place when the block ends without an error, removed
    in every case, so a crash leaves the old dataset (or none), never a half-written one."""
    final = dataset_dir(did, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_root = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        with minari_root(tmp_root), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari warns about fields we leave unset
            yield tmp_root
        swap_into_place(tmp_root / did, final)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)


def write_dataset(did: str, buffers, env, root=None, metadata: dict | None = None, **create_kwargs) -> str:
    """Local Minari dataset `did` from a list of EpisodeBuffers, written atomically (`building`);
    `metadata` (JSON-able) joins Minari's own; `create_kwargs` go to create_dataset_from_buffers."""
    import minari

    with building(did, root):
        dataset = minari.create_dataset_from_buffers(did, buffers, env=env, **create_kwargs)
        if metadata:
            dataset.storage.update_metadata(metadata)
    return did


def heldout_episodes(n_episodes: int, fraction: float, seed: int) -> list[int]:
    """A seeded `fraction` of episode ids (at least one when there are two or more episodes)."""
    k = int(round(fraction * n_episodes))
    if fraction > 0 and n_episodes >= 2:
        k = max(k, 1)
    rng = np.random.default_rng([int(seed), 0x5EED])
    return sorted(int(i) for i in rng.choice(n_episodes, size=k, replace=False))
