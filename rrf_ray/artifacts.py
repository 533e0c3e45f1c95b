"""A content-addressed store of finished artifacts (trained models, shard sets) under a sweep.

An artifact's key is a hash of exactly the spec parts that determine it, so a sweep
resumed, or re-run with another spec, reuses what is still valid and redoes the rest.
An artifact is copied in under a temporary name and renamed, then marked DONE: a crash
never leaves a half-copied artifact that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

from rrf_ray.atomic import write_atomic

DONE = "DONE"


def artifact_key(*parts) -> str:
    """Stable hash of JSON-able parts (pydantic models are dumped first)."""
    plain = [p.model_dump(mode="json") if hasattr(p, "model_dump") else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ArtifactStore:
    def __init__(self, root):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def is_done(self, kind: str, key: str) -> bool:
        return (self.path(kind, key) / DONE).exists()

    def publish(self, kind: str, key: str, source) -> Path:
        """Copy a finished directory in as artifact (kind, key); returns its path."""
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(source, tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_atomic(final / DONE, "")
        return final

    def mark_done(self, kind: str, key: str) -> Path:
        """For artifacts built in place (their builder is itself resumable, e.g. shard sets)."""
        write_atomic(self.path(kind, key) / DONE, "")
        return self.path(kind, key)
