"""Where a sweep keeps its files: a directory, or a URI that pyarrow.fs opens (s3://, gs://, ...).

Tune and Ray Train keep their own state at the location directly (they speak pyarrow.fs).
rrf_ray's files (datasets, models, shards, trial results, the report) are made and read in a
local directory on the node that needs them: for a directory that is the location itself
(a shared file system on a multi-node cluster); for a URI it is a per-node mirror under
`RRF_RAY_CACHE` (default ~/.cache/rrf_ray), from which finished files are pushed to the URI
and into which other nodes pull them. Minari, h5py and torch.load read local files only,
hence a mirror rather than streaming. Directories are pushed before the marker that says
they are complete, so a crash never leaves a remote artifact that a later run trusts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

from rrf_ray.engine.atomic import replace_directory


def is_uri(location) -> bool:
    return "://" in str(location)


def join_uri(uri: str, *parts: str) -> str:
    """`s3://b/x?endpoint_override=h` + `y` -> `s3://b/x/y?endpoint_override=h` (query kept at the end)."""
    u = urlsplit(uri)
    path = u.path.rstrip("/") + "".join("/" + p.strip("/") for p in parts if p)
    return urlunsplit((u.scheme, u.netloc, path, u.query, u.fragment))


class SweepStorage:
    """One sweep's files at `location`/`name`; pickles small (rebuilt from its two strings)."""

    def __init__(self, location, name: str):
        self.location, self.name = str(location), name
        if is_uri(self.location):
            self.uri = join_uri(self.location, name)
            try:
                self.fs, self.remote = pafs.FileSystem.from_uri(self.uri)
            except Exception as e:  # pyarrow raises several types for bad or unsupported URIs
                raise ValueError(f"cannot open storage {self.location!r}: {e}") from None
            self.remote = self.remote.rstrip("/")
            cache = Path(os.environ.get("RRF_RAY_CACHE", "~/.cache/rrf_ray")).expanduser()
            self.local = cache / hashlib.sha256(self.uri.encode()).hexdigest()[:12] / name
        else:  # absolute now: Tune runs trials in their own working directories
            self.location = str(Path(self.location).expanduser().resolve())
            self.fs = self.remote = None
            self.local = Path(self.location) / name
            self.uri = str(self.local)

    def __reduce__(self):
        return SweepStorage, (self.location, self.name)

    def __repr__(self) -> str:
        return f"SweepStorage({self.uri!r})"

    @property
    def is_remote(self) -> bool:
        return self.fs is not None

    def uri_of(self, rel: str) -> str:
        """What Tune and Ray Train get as a storage path for `rel`."""
        return join_uri(self.uri, rel) if self.is_remote else str(self.local / rel)

    def remote_path(self, rel: str) -> str:
        """`rel` as a path on `self.fs` (for readers that take a filesystem and paths, like Ray Data)."""
        return f"{self.remote}/{rel}"

    def _info(self, rel: str) -> pafs.FileInfo:
        return self.fs.get_file_info(self.remote_path(rel))

    def exists(self, rel: str) -> bool:
        """Whether the location holds `rel` (the local mirror is not asked)."""
        if not self.is_remote:
            return (self.local / rel).exists()
        return self._info(rel).type != pafs.FileType.NotFound

    def holds_anything(self, ignore: tuple[str, ...] = ()) -> bool:
        """Whether the location holds files other than those named in `ignore` (e.g. a driver's lock)."""
        if not self.is_remote:
            return self.local.exists() and any(p.name not in ignore for p in self.local.iterdir())
        info = self.fs.get_file_info(self.remote)
        if info.type != pafs.FileType.Directory:
            return False
        entries = self.fs.get_file_info(pafs.FileSelector(self.remote, recursive=False))
        return any(e.base_name not in ignore for e in entries)

    def read_text(self, rel: str) -> str | None:
        """`rel` as read at the location now, or None if it is not there."""
        if not self.is_remote:
            path = self.local / rel
            return path.read_text() if path.exists() else None
        try:
            with self.fs.open_input_stream(self.remote_path(rel)) as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def pull(self, rel: str, refresh: bool = False) -> Path:
        """The local path of `rel`, copied down first when only the location has it (or `refresh`)."""
        local = self.local / rel
        if not self.is_remote or (local.exists() and not refresh):
            return local
        info = self._info(rel)
        if info.type == pafs.FileType.NotFound:
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.pull-{uuid.uuid4().hex[:8]}")
        try:
            if info.type == pafs.FileType.Directory:
                tmp.mkdir()
            pafs.copy_files(self.remote_path(rel), str(tmp), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            if local.exists() and not refresh:
                return local  # another process on this node pulled it meanwhile: keep theirs
            replace_directory(tmp, local) if local.is_dir() else os.replace(tmp, local)
        finally:
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()
        return local

    def push(self, rel: str) -> None:
        """Copy the local `rel` (file or directory) to the location; nothing to do for a directory location."""
        if not self.is_remote:
            return
        local = self.local / rel
        if not local.exists():
            raise FileNotFoundError(f"cannot push {local}: it does not exist")
        target = self.remote_path(rel)
        self.fs.create_dir(target if local.is_dir() else target.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(str(local), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
