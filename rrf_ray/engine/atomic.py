"""Atomic writes: a temporary sibling, fsync, then os.replace (files); a rename swap (directories).

A crash leaves either the old file or the new one, never half a file that a later run
would trust.
"""

from __future__ import annotations

import os
import shutil
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


def replace_directory(tmp, dest) -> Path:
    """Move the finished directory `tmp` to `dest`, replacing what `dest` holds.

    os.replace cannot put a directory over a non-empty one, so the old one is first renamed
    aside, then deleted: a reader sees the old directory or the new one, never a half-deleted
    one, and a crash between the renames leaves `dest` absent (rebuilt), never mixed.
    """
    tmp, dest = Path(tmp), Path(dest)
    if not dest.exists():
        os.replace(tmp, dest)
        return dest
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    os.replace(dest, old)
    os.replace(tmp, dest)
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()
    return dest
