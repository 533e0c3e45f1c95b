"""One driver per sweep: a lock file in the sweep's storage, held for the driver's lifetime.

Two drivers on one storage would both run every unfinished trial and write the same
artifacts and result.json files. The lock file, `driver.lock` in the sweep directory, names
its holder (host, pid, start time, command) so that a refused driver can say who holds it.

A directory storage is locked with flock: the kernel (or a shared file system's lock
manager) releases it when its process ends, however it ends, so the next driver takes it
over at once. A URI storage (pyarrow: S3, GCS) has no locks: its holder rewrites a heartbeat
every `heartbeat_s`, and a lock whose heartbeat is older than `stale_s`, or whose process is
gone from this host, is taken over. (Two drivers that start within a second of each other on
one URI can both read "free"; the later write wins, and each rereads after writing, so the
loser stops.) A file system without flock falls back to the heartbeat.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

from rrf_ray.engine.atomic import write_atomic
from rrf_ray.engine.spec import ConfigError

LOCK_FILE = "driver.lock"
HEARTBEAT_S = 30.0
STALE_S = 120.0


class StorageLocked(ConfigError):
    """Another driver holds the sweep's storage: the CLI prints this and exits 2."""


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = process_start(pid)
    return started is None or now is None or now == started


def describe_holder(info: dict | None) -> str:
    if not info:
        return "a driver that left no details"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}"
            + (f" ({info['command']})" if info.get("command") else ""))


class StorageLock:
    """The lock of `storage` (a SweepStorage). `acquire()` raises StorageLocked naming the
    holder, or returns a line saying whose stale lock it took over (None if there was none)."""

    def __init__(self, storage, command: str = "", heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.storage, self.heartbeat_s, self.stale_s = storage, heartbeat_s, stale_s
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "proc_start": process_start(os.getpid()),
                     "started": datetime.now().astimezone().isoformat(timespec="seconds"), "command": command,
                     "token": uuid.uuid4().hex}
        self._fd: int | None = None
        self._made: list[Path] = []  # directories the lock created: removed again if left empty
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # -- what each kind of storage does --------------------------------------------------

    @property
    def _path(self) -> Path:
        return self.storage.local / LOCK_FILE

    def _read(self) -> dict | None:
        try:
            text = (self.storage.read_text(LOCK_FILE) if self.storage.is_remote else
                    self._path.read_text() if self._path.exists() else None)
        except OSError:
            return None
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:  # being written this instant: no details
            return {}

    def _write(self) -> None:
        text = json.dumps({**self.info, "heartbeat": time.time()}, indent=1)
        if self.storage.is_remote:
            self.storage.fs.create_dir(self.storage.remote, recursive=True)
            with self.storage.fs.open_output_stream(self.storage.remote_path(LOCK_FILE)) as f:
                f.write(text.encode())
        elif self._fd is not None:  # rewritten in place: the flock belongs to this inode
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode(), 0)
            os.fsync(self._fd)
        else:
            write_atomic(self._path, text)

    def _delete(self) -> None:
        if self.storage.is_remote:
            try:
                self.storage.fs.delete_file(self.storage.remote_path(LOCK_FILE))
            except OSError:  # already gone, or the storage is unreachable: it goes stale
                pass
        else:
            self._path.unlink(missing_ok=True)

    # -- acquire / release ---------------------------------------------------------------

    def acquire(self) -> str | None:
        if not self.storage.is_remote:
            missing = [p for p in (self.storage.local, *self.storage.local.parents) if not p.exists()]
            self.storage.local.mkdir(parents=True, exist_ok=True)
            self._made = missing  # deepest first
            try:
                return self._acquire_flock()
            except OSError as e:  # a file system without flock: the heartbeat instead
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                print(f"[lock] {self.storage.uri} has no file locks ({e}); using a heartbeat lock", flush=True)
        return self._acquire_heartbeat()

    def _acquire_flock(self) -> str | None:
        while True:
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise StorageLocked(self._held_message(self._read_settled())) from None
            except OSError:
                os.close(fd)
                raise
            try:  # the holder before us may have unlinked the file after we opened it: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self._path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        previous = self._read()
        self._write()
        if previous:  # a driver that ended without removing its file: it crashed or was killed
            return f"[lock] took over {self.storage.uri}: its last driver ({describe_holder(previous)}) is gone"
        return None

    def _read_settled(self) -> dict | None:
        """The holder's details; it writes them just after it locks, so retry an empty read briefly."""
        for _ in range(20):
            info = self._read()
            if info:
                return info
            time.sleep(0.05)
        return info

    def _acquire_heartbeat(self) -> str | None:
        previous = self._read()
        if previous and not self._stale(previous):
            raise StorageLocked(self._held_message(previous))
        self._write()
        time.sleep(1.0)  # a driver that read "free" at the same moment writes now: the later write wins
        winner = self._read()
        if not winner or winner.get("token") != self.info["token"]:
            raise StorageLocked(self._held_message(winner))
        self._beat = threading.Thread(target=self._keep_beating, name="rrf_ray-lock-heartbeat", daemon=True)
        self._beat.start()
        if previous:
            why = ("its process is gone" if previous.get("host") == self.info["host"]
                   else f"no heartbeat for over {self.stale_s:g} s")
            return f"[lock] took over {self.storage.uri} from {describe_holder(previous)}: {why}"
        return None

    def _stale(self, info: dict) -> bool:
        if info.get("host") == self.info["host"] and isinstance(info.get("pid"), int):
            return not process_alive(info["pid"], info.get("proc_start"))
        return time.time() - float(info.get("heartbeat", 0)) > self.stale_s

    def _keep_beating(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except OSError as e:  # the storage is unreachable for now: the next beat tries again
                print(f"[lock] heartbeat to {self.storage.uri} failed: {e}", file=sys.stderr, flush=True)

    def _held_message(self, holder: dict | None) -> str:
        return (f"{self.storage.uri} is in use by another driver: {describe_holder(holder)}. Wait for it to "
                "finish or stop it (its lock is taken over once its process is gone)")

    def release(self) -> None:
        """Remove the lock (only this driver's own)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
        if self._fd is not None:
            self._delete()  # while still locked: the next driver finds no file, or its own
            os.close(self._fd)
            self._fd = None
        elif self.storage.is_remote or self._path.exists():
            current = self._read()
            if current and current.get("token") == self.info["token"]:
                self._delete()
        for directory in self._made:  # a run that wrote nothing leaves no trace
            try:
                directory.rmdir()
            except OSError:  # not empty: the sweep wrote something
                break
        self._made = []
