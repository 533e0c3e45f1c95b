"""Atomic file writes: a temporary sibling, fsync, then os.replace.

A crash leaves either the old file or the new one, never half a file that a later run
would trust.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomic(path, data: bytes | str) -> Path:
    """Write `data` to `path` via a temporary sibling and os.replace: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
