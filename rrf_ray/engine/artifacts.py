"""A content-addressed store of finished artifacts (trained models, shard sets) under a sweep.

An artifact's key is a hash of exactly the spec parts that determine it, so a sweep
resumed, or re-run with another spec, reuses what is still valid and redoes the rest.
An artifact is copied in under a temporary name and renamed, then marked DONE: a crash
never leaves a half-copied artifact that a later run would trust. With remote storage the
store is a local mirror: an artifact is pushed before its DONE marker, and one that only
the remote location holds is pulled when asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from rrf_ray.engine.atomic import write_atomic

DONE = "DONE"


def artifact_key(*parts) -> str:
    """Stable hash of JSON-able parts (pydantic models are dumped first)."""
    plain = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ArtifactStore:
    """Artifacts under `storage`'s `artifacts/` (a SweepStorage: a directory, or a mirrored URI)."""

    def __init__(self, storage, prefix: str = "artifacts"):
        self.storage, self.prefix = storage, prefix
        self.root = storage.local / prefix

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _rel(self, kind: str, key: str, *more: str) -> str:
        return "/".join((self.prefix, kind, key) + more)

    def is_done(self, kind: str, key: str) -> bool:
        """Finished here, or finished at the remote location (then pulled here)."""
        if (self.path(kind, key) / DONE).exists():
            return True
        if self.storage.is_remote and self.storage.exists(self._rel(kind, key, DONE)):
            # a local copy without DONE is an interrupted one: replace it
            self.storage.pull(self._rel(kind, key), refresh=self.path(kind, key).exists())
            return (self.path(kind, key) / DONE).exists()
        return False

    def ensure(self, kind: str, key: str, build: Callable[[Path], object], in_place: bool = False) -> Path:
        """The artifact (kind, key): reused when finished, else built by `build(directory)`, then marked DONE.

        `build` makes and fills `directory`, a temporary path that is renamed into place only once it
        returns, so a crash leaves nothing a later run trusts. in_place: build in the artifact's own
        directory instead, for a builder that resumes its own partial work (a shard set).
        """
        if self.is_done(kind, key):
            return self.path(kind, key)
        if in_place:
            self.path(kind, key).mkdir(parents=True, exist_ok=True)
            build(self.path(kind, key))
            return self.mark_done(kind, key)
        return self._replace_with(kind, key, build)

    def require(self, kind: str, key: str, what: str) -> Path:
        """A finished artifact an earlier stage made (RuntimeError naming `what` if it did not)."""
        if not self.is_done(kind, key):
            raise RuntimeError(f"{what} is missing at {self.path(kind, key)}: an earlier stage did not finish")
        return self.path(kind, key)

    def publish(self, kind: str, key: str, source) -> Path:
        """Copy a finished directory in as artifact (kind, key); returns its path."""
        return self._replace_with(kind, key, lambda tmp: shutil.copytree(source, tmp))

    def _replace_with(self, kind: str, key: str, build: Callable[[Path], object]) -> Path:
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        try:
            build(tmp)
            tmp.mkdir(parents=True, exist_ok=True)
            (tmp / DONE).unlink(missing_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return self.mark_done(kind, key)

    def mark_done(self, kind: str, key: str) -> Path:
        """Push the artifact (remote storage), then mark it DONE here and there.

        Also for artifacts built in place (their builder is itself resumable, e.g. shard sets).
        """
        self.storage.push(self._rel(kind, key))  # push is a no-op for a directory location
        write_atomic(self.path(kind, key) / DONE, "")
        self.storage.push(self._rel(kind, key, DONE))
        return self.path(kind, key)
