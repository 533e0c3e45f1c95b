"""Connecting to Ray (a private local Ray unless a cluster is asked for) and keeping its console quiet.

A quiet console (the default) shows Tune's status table, progress bars and the sweep's own
lines: the driver's, and the `[label] message` lines its trials and training runs print.
Everything else Ray's processes print (C++ log lines such as `core_worker.cc: ...`, Ray
Train's and Ray Data's messages, Python warnings) stays in Ray's log directory, where Ray
writes it anyway (`worker-*.out|err`, one pair per worker process); the driver's own Ray
warnings, and the warnings its raylet pushes to the driver, go to `rrf_ray-driver.log` there
(the raylet's errors still reach the console). `--verbose` (set_verbose) shows them all.
"""

from __future__ import annotations

import functools
import logging
import logging.handlers
import os
import re
import socket
import sys
from pathlib import Path

import ray
from ray.experimental.tqdm_ray import RAY_TQDM_MAGIC

from rrf_ray.engine import stopping

DRIVER_LOG = "rrf_ray-driver.log"
STEP_LINE = re.compile(r"^\[[A-Za-z][^\]\s]*\] ")  # "[expert-umaze-g3-0fb2] step 50/100 ...", "[sweep] ..."
_console = {"verbose": False, "notes": []}


def set_verbose(verbose: bool) -> None:
    """`--verbose`: Ray's warnings and every worker line on the console too (default: quiet)."""
    _console["verbose"] = verbose


def note(line: str) -> None:
    """Print `line` just after the lines saying which Ray the run uses (at once if Ray is up):
    a run's first line says which Ray it uses, whatever the driver found before starting it."""
    _console["notes"].append(line)
    if ray.is_initialized():
        print_notes()


def print_notes() -> None:
    """The notes not printed yet (a run that ends before Ray starts prints them at its end)."""
    while _console["notes"]:
        print(_console["notes"].pop(0), flush=True)


def started_cluster_address() -> str | None:
    """The address a `ray start` on this machine recorded, if that Ray still answers (else None).

    Only `ray start` (and `ray up`'s head, and `ray.cluster_utils.Cluster`) records it; another
    driver's private local Ray does not, so a sweep never joins, and dies with, a Ray that another
    sweep started for itself. A record left by a Ray that is gone (killed, not `ray stop`ped) is
    ignored with a note: joining it would wait minutes for a GCS that never answers.
    """
    try:
        from ray._private.services import find_bootstrap_address
    except ImportError:  # a Ray that moved it: join only when asked
        return None
    address = find_bootstrap_address(None)
    if not address or answers(address):
        return address
    note(f"[ray] ignoring the stale `ray start` record ({address}: nothing answers there); "
         "`ray stop` removes it, --address joins a cluster explicitly")
    return None


def answers(address: str, timeout_s: float = 2.0) -> bool:
    """Whether something accepts TCP connections at `host:port` (a live GCS does)."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool | None = None,
             quiet: bool | None = None) -> None:
    """Idempotent `ray.init`: join a cluster when asked, else start a private local Ray.

    Joins `address`, else RAY_ADDRESS, else the cluster a `ray start` on this machine recorded;
    otherwise (or with address "local") starts a local Ray for this process alone, with
    `num_cpus` logical CPUs. Prints one line saying which Ray the run uses, and (quiet, the
    default unless set_verbose) one saying where Ray's own messages went.
    """
    if ray.is_initialized():
        return
    quiet = not _console["verbose"] if quiet is None else quiet
    held = hold_ray_warnings() if quiet else None  # ray.init itself warns (e.g. about its auth token)
    kwargs = dict(logging_level=logging.INFO, log_to_driver=True)
    address = address or os.environ.get("RAY_ADDRESS") or started_cluster_address()
    if address and address != "local":
        context = ray.init(address=address, **kwargs)
        what = f"joined the Ray cluster at {address}"
    else:
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
        what = "started a private local Ray"
    stopping.reinstall()  # ray.init installed Ray's SIGTERM handler (a C++ stack dump)
    keep_every_step_line()
    resources = ray.cluster_resources()
    dashboard_url = getattr(context, "dashboard_url", None)
    print(f"[ray] {what} ({ray.get_runtime_context().gcs_address}): {resources.get('CPU', 0):g} CPUs, "
          f"{resources.get('GPU', 0):g} GPUs" + (f", dashboard http://{dashboard_url}" if dashboard_url else ""),
          flush=True)
    if quiet:
        logs = Path(context.address_info["session_dir"]) / "logs"
        log_file = logging.FileHandler(logs / DRIVER_LOG)
        log_file.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s -- %(message)s"))
        held.setTarget(log_file)
        held.flush()
        held.capacity = 0  # from now on each record goes straight to the file
        log_raylet_warnings()
        filtered = show_only_step_lines()
        print(f"[ray] Ray's own messages: {logs} ({DRIVER_LOG}, worker-*.out|err"
              + ("; --verbose shows them here)" if filtered else ")"), flush=True)
    print_notes()


def keep_every_step_line() -> bool:
    """Exempt step lines from Ray's log deduplication. Ray folds worker lines that are equal once
    words with digits are dropped into one "[repeated 2x across cluster]" line, and two trials'
    progress ("[base-1f2e] step 2000/10000 loss ...", "[expert-9a0b] step 2000/10000 loss ...")
    are such lines: one trial's progress vanished from the console. False where Ray has no such
    deduplicator."""
    try:
        from ray._private import ray_logging
    except ImportError:
        return False
    deduplicators = [getattr(ray_logging, name, None) for name in ("stdout_deduplicator", "stderr_deduplicator")]
    deduplicators = [d for d in deduplicators if d is not None and hasattr(d, "allow_re")]
    for deduplicator in deduplicators:
        allowed = deduplicator.allow_re
        if allowed is None:
            deduplicator.allow_re = STEP_LINE
        elif STEP_LINE.pattern not in allowed.pattern:
            deduplicator.allow_re = re.compile(f"{STEP_LINE.pattern}|{allowed.pattern}")
    return bool(deduplicators)


def log_raylet_warnings() -> bool:
    """The warnings a raylet pushes to the driver ("WARNING: 8 PYTHON worker processes have been
    started ...") go to the driver's log file instead of the console; its errors still print.
    Ray prints them through its module's `print_to_stdstream`, so that is what is wrapped."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return False
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if printer is None:
        return False
    if not isinstance(printer, functools.partial):  # wrapped once per process
        ray_worker.print_to_stdstream = functools.partial(_print_raylet_errors_only, printer)
    return True


def _print_raylet_errors_only(print_lines, data: dict, ignore_prefix: bool) -> None:
    if data.get("pid") == "raylet":
        lines = data.get("lines", [])
        for line in lines:
            if line.startswith("WARNING"):
                logging.getLogger("ray.raylet").warning(line)
        data = {**data, "lines": [line for line in lines if not line.startswith("WARNING")]}
        if not data["lines"]:
            return
    print_lines(data, ignore_prefix)


def hold_ray_warnings() -> logging.handlers.MemoryHandler:
    """The driver's "ray" loggers print errors only; the rest is held for Ray's log directory
    (unknown until ray.init has started a session), to which the returned handler then writes."""
    ray_logger = logging.getLogger("ray")
    for handler in ray_logger.handlers:
        if not isinstance(handler, logging.handlers.MemoryHandler):
            handler.setLevel(logging.ERROR)
    held = logging.handlers.MemoryHandler(capacity=10_000, flushLevel=logging.CRITICAL + 1)
    ray_logger.addHandler(held)
    return held


def worth_showing(line: str) -> bool:
    """A worker line the quiet console shows: a step line, or a Ray progress bar's update."""
    return bool(STEP_LINE.match(line)) or RAY_TQDM_MAGIC in line


def _print_kept_lines(print_lines, data: dict) -> None:
    if data.get("pid") == "autoscaler":  # cluster events ("adding 2 nodes"): the user's to see
        print_lines(data)
        return
    lines = [line for line in data.get("lines", []) if worth_showing(line)]
    if lines:
        print_lines({**data, "lines": lines})


def show_only_step_lines() -> bool:
    """Wrap the driver's printer of worker lines (Ray's `log_to_driver`) so that it prints only
    those `worth_showing`; Ray has no filter of its own. False where this Ray has no such printer."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except ImportError:
        return False
    printers = [(name, handler) for name, handler in dispatcher.handlers if name == "ray_print_logs"]
    for name, handler in printers:
        dispatcher.remove_handler(name)
        dispatcher.add_handler(name, functools.partial(_print_kept_lines, handler))
    return bool(printers)


def say(message: str) -> None:
    """A progress line from inside a Ray Train worker.

    Train V2 patches `print` to log *and* echo when stdout is redirected (it is, in Ray
    workers), so each line would reach the console twice; writing to the stream once avoids it.
    """
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def quiet_ray_data() -> None:
    """No Ray Data progress bars or "Starting execution" lines in this process: the reward
    trainer runs one execution per epoch, and the step lines already say how it goes."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def quiet_train_worker_logs() -> None:
    """Silence Train V2's per-report INFO line ("Reporting training result ..."); keep warnings."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a Ray without Train V2 internals: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)
