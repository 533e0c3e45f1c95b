"""Parquet shards of training triples, and the manifest that says which ones to trust.

Columns: `x_next`, `x_base`, `x_expert` as fixed-shape float32 tensor columns of one
sample shape ([H, D] trajectory windows, [C, H, W] image latents; Arrow's canonical
`fixed_shape_tensor`: Ray Data reads them as (B, *shape) tensors; a list-of-arrays
column is ~100x slower), plus `t` (diffusion step of x_next),
`chain_kind` (1: the chain followed the base model, 2: the expert, 0: dataset noising),
`chain_id`, and where the row's data came from: `source_dataset` (1 base, 2 expert, 0 none)
and `source_episode` (the episode of the noised window or of the inpainted start; -1 none),
so that anyone can check that validation rows come from held-out episodes only. Each shard is written to a temp file and renamed; the manifest records
its rows and SHA-256 and is itself replaced atomically after each shard.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rrf_ray.engine.atomic import write_atomic

MANIFEST = "manifest.json"
TENSOR_COLUMNS = ("x_next", "x_base", "x_expert")


class ShardError(RuntimeError):
    """A missing, truncated, corrupt or schema-mismatched shard; the message names the file."""


def tensor_column(a: np.ndarray) -> pa.ExtensionArray:
    """(N, *shape) float32 -> fixed-shape tensor column, zero-copy (from_numpy_ndarray copies slowly)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    storage = pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), int(np.prod(a.shape[1:])))
    return pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(pa.float32(), list(a.shape[1:])), storage)


def triples_table(x_next, x_base, x_expert, t, chain_kind, chain_id, source_dataset=None,
                  source_episode=None) -> pa.Table:
    columns = {name: tensor_column(a) for name, a in zip(TENSOR_COLUMNS, (x_next, x_base, x_expert))}
    n = len(t)
    columns["t"] = pa.array(np.asarray(t, dtype=np.int32))
    columns["chain_kind"] = pa.array(np.asarray(chain_kind, dtype=np.int8))
    columns["chain_id"] = pa.array(np.asarray(chain_id, dtype=np.int64))
    columns["source_dataset"] = pa.array(np.zeros(n, np.int8) if source_dataset is None
                                         else np.asarray(source_dataset, dtype=np.int8))
    columns["source_episode"] = pa.array(np.full(n, -1, np.int64) if source_episode is None
                                         else np.asarray(source_episode, dtype=np.int64))
    return pa.table(columns)


def read_triples(paths) -> dict[str, np.ndarray]:
    """The triple columns (x_next, x_base, x_expert, t) of shard files, read whole with pyarrow."""
    table = pq.read_table([str(p) for p in paths], columns=[*TENSOR_COLUMNS, "t"])
    # copies: Arrow's views are read-only, which torch warns about when it wraps them
    columns = {c: table[c].combine_chunks().to_numpy_ndarray().copy() for c in TENSOR_COLUMNS}
    columns["t"] = table["t"].to_numpy().copy()
    return columns


def expected_schema(*sample_shape: int) -> pa.Schema:
    tensor = pa.fixed_shape_tensor(pa.float32(), [int(n) for n in sample_shape])
    return pa.schema([(c, tensor) for c in TENSOR_COLUMNS]
                     + [("t", pa.int32()), ("chain_kind", pa.int8()), ("chain_id", pa.int64()),
                        ("source_dataset", pa.int8()), ("source_episode", pa.int64())])


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_shard(path: Path, table: pa.Table) -> dict:
    """Write atomically; returns the manifest entry {rows, sha256}."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Dictionary encoding of float tensors only costs time; lz4 is cheap.
    pq.write_table(table, tmp, compression="lz4", use_dictionary=False)
    os.replace(tmp, path)
    return {"rows": table.num_rows, "sha256": file_sha256(path)}


@dataclass
class Manifest:
    """What a shard directory holds: its spec fingerprint, sample shape, and each complete shard.

    sample_shape is (horizon, transition_dim) for trajectory windows, (C, H, W) for image latents.
    conditioned: the entries every triple holds fixed by inpainting (`{"rows": [0], "first_column":
    action_dim}`: the start state), whose target is 0 by construction; the alignment loss leaves them out.
    """

    fingerprint: dict
    sample_shape: tuple[int, ...]
    shards: dict[str, dict] = field(default_factory=dict)  # name -> {rows, sha256, split}
    conditioned: dict | None = None

    def __post_init__(self):
        self.sample_shape = tuple(int(n) for n in self.sample_shape)

    @property
    def horizon(self) -> int:
        """Rows of a trajectory window (sample_shape[0])."""
        return self.sample_shape[0]

    @horizon.setter
    def horizon(self, value: int) -> None:
        self.sample_shape = (int(value), *self.sample_shape[1:])

    @property
    def transition_dim(self) -> int:
        """Channels of a trajectory window (sample_shape[-1])."""
        return self.sample_shape[-1]

    @classmethod
    def load(cls, directory) -> "Manifest | None":
        path = Path(directory) / MANIFEST
        if not path.exists():
            return None
        d = json.loads(path.read_text())
        shape = d.get("sample_shape") or (d["horizon"], d["transition_dim"])  # manifests before sample_shape
        return cls(d["fingerprint"], shape, d["shards"], d.get("conditioned"))

    def save(self, directory) -> None:
        body = {"fingerprint": self.fingerprint, "sample_shape": list(self.sample_shape), "shards": self.shards,
                "conditioned": self.conditioned}
        if len(self.sample_shape) == 2:  # still readable by code that knows only windows
            body["horizon"], body["transition_dim"] = self.sample_shape
        write_atomic(Path(directory) / MANIFEST, json.dumps(body, indent=1, sort_keys=True))

    def paths(self, directory, split: str | None = None) -> list[str]:
        return [str(Path(directory) / name) for name, entry in sorted(self.shards.items())
                if split is None or entry["split"] == split]

    def loss_mask(self) -> np.ndarray | None:
        """(sample_shape) bool, False at the conditioned entries (None: every entry counts)."""
        if not self.conditioned:
            return None
        mask = np.ones(self.sample_shape, dtype=bool)
        for row in self.conditioned["rows"]:
            mask[row, self.conditioned["first_column"]:] = False
        return mask

    def rows(self, split: str | None = None) -> int:
        return sum(e["rows"] for e in self.shards.values() if split is None or e["split"] == split)


def shard_is_intact(directory, name: str, entry: dict | None) -> bool:
    path = Path(directory) / name
    return entry is not None and path.exists() and file_sha256(path) == entry["sha256"]


def verify_shards(directory) -> Manifest:
    """Check every shard against the manifest (checksum, readable footer, schema, rows).

    Raises ShardError naming the first bad file; run pre-generation again to repair it.
    """
    directory = Path(directory)
    manifest = Manifest.load(directory)
    if manifest is None:
        raise ShardError(f"no {MANIFEST} in {directory}: pre-generate the triples first")
    schema = expected_schema(*manifest.sample_shape)
    for name, entry in sorted(manifest.shards.items()):
        path = directory / name
        if not path.exists():
            raise ShardError(f"shard {path} is missing; run pre-generation again to regenerate it")
        if file_sha256(path) != entry["sha256"]:
            raise ShardError(f"shard {path} is corrupt or truncated (checksum mismatch); "
                             "run pre-generation again to regenerate it")
        try:
            meta = pq.read_metadata(path)
            found = pq.read_schema(path)
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise ShardError(f"shard {path} cannot be read as Parquet: {e}") from None
        if not found.equals(schema, check_metadata=False):
            raise ShardError(f"shard {path} has schema {found} but {schema} was expected")
        if meta.num_rows != entry["rows"]:
            raise ShardError(f"shard {path} has {meta.num_rows} rows, the manifest says {entry['rows']}")
    return manifest


def run_shard_tasks(submit, todo: list[int], manifest: Manifest, out_dir, names: list[str], splits: list[str],
                    rows_of: list[int], desc: str, progress: bool = True, on_this_node: bool = False) -> Manifest:
    """Run one Ray task per missing shard and record each in the manifest as it lands.

    submit(i, scheduling_strategy) -> ObjectRef of shard i's `write_shard` entry. Tasks run
    outside the caller's placement group ("DEFAULT": a Tune trial's holds just its own process),
    or on this node when the shard files are local to it rather than shared.
    """
    import ray
    from tqdm.auto import tqdm

    strategy = "DEFAULT"
    if on_this_node:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        strategy = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    pending = {submit(i, strategy): i for i in todo}
    bar = tqdm(total=sum(rows_of), initial=sum(rows_of[i] for i in range(len(names)) if i not in todo),
               unit="rows", desc=f"{desc} -> {Path(out_dir).name}", disable=not progress, mininterval=1.0)
    with bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done[0])
            entry = ray.get(done[0])
            manifest.shards[names[i]] = {**entry, "split": splits[i]}
            manifest.save(out_dir)
            bar.update(entry["rows"])
    return manifest
