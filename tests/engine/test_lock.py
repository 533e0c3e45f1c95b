"""One driver per storage: the lock file names its holder; a lock whose driver is gone is taken over.

A directory is locked with flock (released by the kernel however its process ends); a URI
(here a real S3 protocol server, moto's) by a heartbeat that goes stale.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from rrf_ray.engine.lock import LOCK_FILE, StorageLock, StorageLocked
from rrf_ray.engine.storage import SweepStorage

HOLD_LOCK = """
import sys, time
from rrf_ray.engine.lock import StorageLock
from rrf_ray.engine.storage import SweepStorage
StorageLock(SweepStorage(sys.argv[1], "sweep"), command="holder").acquire()
print("HELD", flush=True)
time.sleep(300)
"""


def test_a_second_lock_on_a_directory_is_refused_naming_the_holder(tmp_path):
    storage = SweepStorage(str(tmp_path), "sweep")
    first = StorageLock(storage, command="python -m rrf_ray.sweep first")
    assert first.acquire() is None
    try:
        held = json.loads((tmp_path / "sweep" / LOCK_FILE).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["started"]
        with pytest.raises(StorageLocked, match=rf"in use by another driver: pid {os.getpid()} on .*first"):
            StorageLock(storage).acquire()
    finally:
        first.release()
    assert not (tmp_path / "sweep" / LOCK_FILE).exists()  # released: the next driver finds nothing to take over
    assert not (tmp_path / "sweep").exists()  # the lock made the directory, nothing else wrote to it: gone again
    again = StorageLock(storage)
    assert again.acquire() is None
    (tmp_path / "sweep" / "spec.json").write_text("{}")
    again.release()
    assert (tmp_path / "sweep" / "spec.json").exists()  # a directory the sweep wrote to stays


def test_the_lock_of_a_killed_driver_is_taken_over_with_a_message(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        with pytest.raises(StorageLocked, match=f"pid {holder.pid} "):
            StorageLock(SweepStorage(str(tmp_path), "sweep")).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / "sweep" / LOCK_FILE).exists()  # a killed driver leaves its file behind
    lock = StorageLock(SweepStorage(str(tmp_path), "sweep"))
    message = lock.acquire()
    assert message is not None and f"pid {holder.pid}" in message and "is gone" in message
    lock.release()


def write_remote_lock(storage: SweepStorage, **info) -> None:
    storage.fs.create_dir(storage.remote, recursive=True)
    with storage.fs.open_output_stream(storage.remote_path(LOCK_FILE)) as f:
        f.write(json.dumps(info).encode())


def test_a_uri_lock_beats_and_goes_stale(s3_uri):
    storage = SweepStorage(s3_uri, "locked")
    first = StorageLock(storage, heartbeat_s=0.3)
    assert first.acquire() is None
    try:
        beat = json.loads(storage.read_text(LOCK_FILE))["heartbeat"]
        time.sleep(1.0)
        assert json.loads(storage.read_text(LOCK_FILE))["heartbeat"] > beat  # the holder keeps it fresh
        with pytest.raises(StorageLocked, match=f"pid {os.getpid()} "):
            StorageLock(storage).acquire()
    finally:
        first.release()
    assert not storage.exists(LOCK_FILE)

    # another host's lock: refused while it beats, taken over once its heartbeat is older than stale_s
    write_remote_lock(storage, host="node-7", pid=4242, started="earlier", heartbeat=time.time())
    with pytest.raises(StorageLocked, match="pid 4242 on node-7"):
        StorageLock(storage, stale_s=60).acquire()
    write_remote_lock(storage, host="node-7", pid=4242, started="earlier", heartbeat=time.time() - 120)
    lock = StorageLock(storage, stale_s=60)
    message = lock.acquire()
    assert "pid 4242 on node-7" in message and "no heartbeat for over 60 s" in message
    lock.release()

    # this host's lock whose process is gone: taken over at once, however fresh its heartbeat
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    write_remote_lock(storage, host=socket.gethostname(), pid=gone.pid, started="earlier", heartbeat=time.time())
    lock = StorageLock(storage)
    assert "its process is gone" in lock.acquire()
    lock.release()
