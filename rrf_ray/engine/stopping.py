"""Stopping a sweep on SIGINT (Ctrl-C) or SIGTERM: cleanly, resumably, without Ray's stack dumps.

The CLI calls `catch_stop_signals(last_words)`. A signal during a Tune stage asks Tune to stop
through SIGUSR1 (Tune's own stop signal: it ends the trials and saves its experiment state),
and the stage raises `SweepStopped` once Tune has returned; anywhere else the handler raises it
at once (inside `ray.get`, Ray turns it into a plain KeyboardInterrupt: `stopped_by`). The CLI
catches it, shuts Ray down and prints the command that resumes the sweep. A second signal
stops at once (what Tune saved so far is still resumable).

Tune's own SIGINT handler is turned off (TUNE_DISABLE_SIGINT_HANDLER): it would swallow the
signal, and the sweep would go on with its next stage. Ray's driver installs a C++ SIGTERM
handler that prints a stack dump when `ray.init` starts its core worker, so `init_ray` puts
these handlers back afterwards (`reinstall`). A stop that has not finished within
STOP_DEADLINE_S says its last words and ends the process anyway.

A SIGTERM sent to the driver's whole process group (`kill -TERM -PGID`; systemd and Slurm
signal every process of a job alike) reaches the private Ray it started too: Ray's processes
block SIGINT only. Its Python processes end at once, its raylet about ten seconds later, and a
driver whose call to Ray finds the raylet gone is ended by Ray's core worker with exit code 1,
with no last words. So `init_ray` names the processes of the private Ray it started
(`watch_own_ray`), and a stop that sees one of them end before the driver began shutting Ray
down itself (`exit_on_next_signal`) ends the process at once, with its last words: what Tune
saved before the signal stays resumable.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_DEADLINE_S = 30.0


class SweepStopped(KeyboardInterrupt):
    """A stop signal reached the driver. A KeyboardInterrupt, so that no `except Exception` in a
    stage swallows it and Ray's blocking calls (ray.get), which poll for Python signals, stop for it."""

    def __init__(self, signum: int):
        self.signum = signum
        self.name = signal.Signals(signum).name
        super().__init__(self.name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # 130 for SIGINT, 143 for SIGTERM, as a shell reports them


_state = {"caught": False, "signum": None, "in_tune": 0, "last_words": None, "own_ray": (), "shutting_down": False}
_final = threading.Lock()  # whoever ends the stop (the driver, or the deadline) holds it


def _ignore(signum, frame) -> None:
    """SIGUSR1 outside a Tune run: its default action would end the process."""


def _on_stop_signal(signum, frame) -> None:
    first = _state["signum"] is None
    if first:
        _state["signum"] = signum
        threading.Thread(target=_watch_stop, args=(signum,), daemon=True).start()
    if first and _state["in_tune"] and signal.getsignal(signal.SIGUSR1) is not _ignore:
        os.write(2, f"[sweep] {signal.Signals(signum).name}: stopping once Tune has saved its state "
                    "(signal again to stop at once)\n".encode())
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune's handler: end the run, save the experiment state
        return
    raise SweepStopped(signum)


def _watch_stop(signum: int, poll_s: float = 0.05) -> None:
    """Until the stop's deadline: end the process as soon as the signal is seen to have reached
    this driver's private Ray too (then every further call to Ray could end it with exit code 1)."""
    deadline = time.monotonic() + STOP_DEADLINE_S
    while time.monotonic() < deadline:
        # the flag read after the processes: an end seen before the driver began shutting Ray down is the signal's
        if _state["own_ray"] and not all(map(_running, _state["own_ray"])) and not _state["shutting_down"]:
            os.write(2, f"[sweep] {signal.Signals(signum).name} reached this sweep's own Ray too: stopping "
                        "now (what Tune saved before it stays resumable)\n".encode())
            break
        time.sleep(poll_s)
    _end_now(signum)


def _end_now(signum: int) -> None:
    if _final.acquire(blocking=False):
        if _state["last_words"] is not None:
            _state["last_words"](SweepStopped(signum))
        os._exit(128 + signum)


def _exit_now(signum, frame) -> None:
    os._exit(128 + signum)


def _install() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for s in STOP_SIGNALS:
        signal.signal(s, _on_stop_signal)
    if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGUSR1, _ignore)


def catch_stop_signals(last_words: Callable[[SweepStopped], None] | None = None) -> None:
    """From now on SIGINT and SIGTERM stop the sweep cleanly (see the module's docstring);
    `last_words(stop)` is what a stop that misses its deadline does before the process ends."""
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    _state.update(caught=True, signum=None, last_words=last_words, shutting_down=False)
    _install()


def reinstall() -> None:
    """Put the handlers back after `ray.init` replaced SIGTERM's (if `catch_stop_signals` was called)."""
    if _state["caught"]:
        _install()


def stop_requested() -> bool:
    """Whether a stop signal has reached this driver."""
    return _state["signum"] is not None


def child_processes() -> set[int]:
    """The process ids of this process's children (Linux's /proc; elsewhere none)."""
    me, children = os.getpid(), set()
    if not sys.platform.startswith("linux"):
        return children
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == me:
            children.add(int(stat.parent.name))
    return children


def watch_own_ray(pids: set[int]) -> None:
    """The processes of the private Ray this driver started (its GCS, raylet and helpers): a stop
    that sees one of them end ends the process at once (see the module's docstring)."""
    _state["own_ray"] = tuple(sorted(pids))


def _running(pid: int) -> bool:
    """Whether `pid` is alive (neither gone nor a zombie waiting for this process to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def stopped_by(interrupt: KeyboardInterrupt) -> SweepStopped:
    """The stop an interrupt stands for: Ray's blocking calls re-raise a signal handler's
    exception as a plain KeyboardInterrupt, so the signal is the one this module recorded."""
    if isinstance(interrupt, SweepStopped):
        return interrupt
    return SweepStopped(_state["signum"] or signal.SIGINT)


def exit_on_next_signal() -> None:
    """While shutting down after a stop: another signal ends the process at once (and the end of
    Ray's processes is the driver's own doing, not the signal's)."""
    _state["shutting_down"] = True
    if threading.current_thread() is threading.main_thread():
        for s in STOP_SIGNALS:
            signal.signal(s, _exit_now)


def finish_stop() -> None:
    """The driver has shut down after a stop and now says its last words itself; returns only
    if the deadline has not begun saying them (then it waits for the deadline to end the process)."""
    if not _final.acquire(blocking=False):
        threading.Event().wait()


@contextmanager
def tune_run():
    """Around a Tune run: a stop signal lets Tune end it cleanly, then raises SweepStopped."""
    if not _state["caught"]:
        yield
        return
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGUSR1, _ignore)  # until Tune installs its own: then a signal raises at once
    _state["in_tune"] += 1
    try:
        yield
    finally:
        _state["in_tune"] -= 1
    if _state["signum"] is not None:
        raise SweepStopped(_state["signum"])
