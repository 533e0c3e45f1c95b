"""Connecting to Ray (a private local Ray unless a cluster is asked for) and keeping its console quiet.

A quiet console (the default) shows Tune's status table, progress bars and the sweep's own
lines: the driver's, and the `[label] message` lines its trials and training runs print (every
trial's: none folded into Ray's "[repeated 2x across cluster]"). Everything else Ray's
processes print (C++ log lines such as `core_worker.cc: ...`, Ray Train's and Ray Data's
messages, Python warnings) stays in Ray's log directory, where Ray writes it anyway
(`worker-*.out|err`, one pair per worker process); the driver's own Ray warnings, and the
warnings its raylet pushes to the driver, go to `rrf_ray-driver.log` there (the raylet's errors
still reach the console). `--verbose` (set_verbose) shows them all.

How, with Ray's public settings (Ray 2.60):
- The driver prints its workers' lines (`ray.init(log_to_driver=True)`) through Ray's log
  deduplicator, which reads three documented environment variables when `ray` is imported
  (ray._private.ray_constants; "Log deduplication" in Ray's "Configuring logging" guide):
  `RAY_DEDUP_LOGS_ALLOW_REGEX` (never deduplicate: the step lines), `RAY_DEDUP_LOGS_SKIP_REGEX`
  (never print: in quiet mode, every line that is not a step line; Ray's tqdm bars pass first,
  and autoscaler events are never deduplicated, so both still print) and `RAY_DEDUP_LOGS`
  (quiet mode sets it to 1: at 0 Ray ignores both regexes). Only the driver deduplicates, so
  workers need none of them (no runtime_env). This module sets them in os.environ when it is
  imported and in set_verbose, which therefore work only before `import ray`: import this
  module, and call set_verbose, before anything imports Ray (this module imports Ray only
  inside its functions). The variables stay in os.environ, so a driver this process starts
  inherits them (set_verbose(True) there takes them back).
- The driver's own Ray messages: Python's logging API on Ray's documented "ray" logger (its
  handlers print errors only; the rest goes to rrf_ray-driver.log).
- Train V2's per-report INFO line ("Reporting training result ...") comes from a logger Train
  names by its file path (`logging.getLogger(__file__)`), which `ray.train.LoggingConfig`
  (it filters `ray.train*` loggers only) cannot reach: a logging.Filter on the worker's root
  handlers drops INFO records of loggers named by a path in Ray's package.
Not used: `ray.LoggingConfig` sets the level of every job process's root and "ray" loggers (a
level drops records from the log files too, not just from the console) and drops the
"(pid=...)" prefix of forwarded lines; `ray.init(log_to_driver=False)` would drop the step
lines with the rest.

Private hooks kept, each guarded (a Ray without it gets Ray's own output, never an error):
- `ray._private.worker.print_to_stdstream` (route_raylet_messages, quiet mode only): the
  messages the raylet pushes to the driver ("WARNING: 8 PYTHON worker processes have been
  started ...", a dead node) bypass `log_to_driver` and have no source a regex can tell from a
  worker's line, so the skip regex would hide the raylet's errors along with its warnings; no
  public setting routes them. Without the hook they are skipped like any other non-step line.
- `ray._private.ray_logging.{stdout,stderr}_deduplicator` (configure_imported_ray): only where
  Ray was imported before this module set the variables above (or set_verbose changed them
  after), it gives Ray's deduplicators the regexes those variables would have.
- `ray._private.services.find_bootstrap_address` (started_cluster_address; not about the
  console): the address a `ray start` recorded, without `ray.init(address="auto")`'s wait on a
  dead one.
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

from rrf_ray.engine import stopping

DRIVER_LOG = "rrf_ray-driver.log"
STEP_LINE = re.compile(r"^\[[A-Za-z][^\]\s]*\] ")  # "[expert-umaze-g3-0fb2] step 50/100 ...", "[sweep] ..."
NOT_A_STEP_LINE = rf"^(?!{STEP_LINE.pattern[1:]})"  # the quiet console's RAY_DEDUP_LOGS_SKIP_REGEX
DEDUP_ENV = ("RAY_DEDUP_LOGS", "RAY_DEDUP_LOGS_ALLOW_REGEX", "RAY_DEDUP_LOGS_SKIP_REGEX")
_console = {"verbose": False, "notes": [], "ray_read": None, "raylet_to_log": False}
_users_dedup_env = {name: os.environ.get(name) for name in DEDUP_ENV}
if _users_dedup_env["RAY_DEDUP_LOGS_SKIP_REGEX"] == NOT_A_STEP_LINE:  # inherited from a quiet driver
    _users_dedup_env["RAY_DEDUP_LOGS_SKIP_REGEX"] = None


def dedup_env(verbose: bool) -> dict[str, str | None]:
    """Ray's log-deduplication variables for a quiet (or verbose) console: step lines never
    folded; quiet, only step lines printed. None: unset (Ray's default, or what the user set)."""
    allow = _users_dedup_env["RAY_DEDUP_LOGS_ALLOW_REGEX"]
    if not allow or allow == STEP_LINE.pattern:
        allow = STEP_LINE.pattern
    elif not allow.startswith(f"{STEP_LINE.pattern}|"):
        allow = f"{STEP_LINE.pattern}|(?:{allow})"
    if verbose:
        return {**_users_dedup_env, "RAY_DEDUP_LOGS_ALLOW_REGEX": allow}
    return {"RAY_DEDUP_LOGS": "1", "RAY_DEDUP_LOGS_ALLOW_REGEX": allow, "RAY_DEDUP_LOGS_SKIP_REGEX": NOT_A_STEP_LINE}


def _set_dedup_env(verbose: bool) -> None:
    """Put dedup_env(verbose) in os.environ; Ray reads it when `ray` is imported. If Ray is
    imported already, remember what it read (the variables as they were then)."""
    if "ray" in sys.modules and _console["ray_read"] is None:
        _console["ray_read"] = {name: os.environ.get(name) for name in DEDUP_ENV}
    for name, value in dedup_env(verbose).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_set_dedup_env(verbose=False)  # before anything imports Ray, if this module is imported first


def set_verbose(verbose: bool) -> None:
    """`--verbose`: Ray's warnings and every worker line on the console too (default: quiet).
    Call it before anything imports Ray (it sets the variables Ray reads then)."""
    _console["verbose"] = verbose
    _set_dedup_env(verbose)


def _ray_is_initialized() -> bool:
    is_initialized = getattr(sys.modules.get("ray"), "is_initialized", None)  # None: Ray not (yet) imported
    return bool(is_initialized and is_initialized())


def note(line: str) -> None:
    """Print `line` just after the lines saying which Ray the run uses (at once if Ray is up):
    a run's first line says which Ray it uses, whatever the driver found before starting it."""
    _console["notes"].append(line)
    if _ray_is_initialized():
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
    import ray

    if ray.is_initialized():
        return
    quiet = not _console["verbose"] if quiet is None else quiet
    if quiet == _console["verbose"]:  # asked here for another console than set_verbose's
        _set_dedup_env(verbose=not quiet)
    filtered = configure_imported_ray(verbose=not quiet) and quiet
    held = hold_ray_warnings() if quiet else None  # ray.init itself warns (e.g. about its auth token)
    kwargs = dict(logging_level=logging.INFO, log_to_driver=True)
    address = address or os.environ.get("RAY_ADDRESS") or started_cluster_address()
    if address and address != "local":
        context = ray.init(address=address, **kwargs)
        what = f"joined the Ray cluster at {address}"
        stopping.watch_own_ray(set())
    else:
        before = stopping.child_processes()
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
        what = "started a private local Ray"
        stopping.watch_own_ray(stopping.child_processes() - before)  # a stop that takes them down ends at once
    stopping.reinstall()  # ray.init installed Ray's SIGTERM handler (a C++ stack dump)
    _console["raylet_to_log"] = quiet and route_raylet_messages()
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
        print(f"[ray] Ray's own messages: {logs} ({DRIVER_LOG}, worker-*.out|err"
              + ("; --verbose shows them here)" if filtered else ")"), flush=True)
    print_notes()


def configure_imported_ray(verbose: bool) -> bool:
    """Whether Ray's log deduplicator follows dedup_env(verbose) (and, quiet, prints step lines only).

    It does when Ray read those variables at its import (the public way). If Ray was imported
    before this module set them, or set_verbose changed them after, Ray's deduplicators get the
    two regexes directly (a private hook: False where this Ray has no such deduplicators, which
    then print as Ray was configured at its import)."""
    wanted = dedup_env(verbose)
    read = _console["ray_read"]
    if read is None or read == wanted:
        return True
    dedup_on = read["RAY_DEDUP_LOGS"] is None or read["RAY_DEDUP_LOGS"].lower() in ("1", "true")
    try:
        from ray._private import ray_logging
    except ImportError:
        return False
    deduplicators = [getattr(ray_logging, name, None) for name in ("stdout_deduplicator", "stderr_deduplicator")]
    deduplicators = [d for d in deduplicators if hasattr(d, "allow_re") and hasattr(d, "skip_re")]
    for deduplicator in deduplicators:
        deduplicator.allow_re = re.compile(wanted["RAY_DEDUP_LOGS_ALLOW_REGEX"])
        skip = wanted["RAY_DEDUP_LOGS_SKIP_REGEX"]
        deduplicator.skip_re = re.compile(skip) if skip else None
    return bool(deduplicators) and (dedup_on or verbose)  # with RAY_DEDUP_LOGS=0 Ray uses neither regex


def route_raylet_messages() -> bool:
    """The messages the raylet pushes to the driver: warnings ("WARNING: 8 PYTHON worker processes
    have been started ...") to the driver's log file, the rest printed as Ray prints them (once a
    stop signal came, all to the log file: "The autoscaler failed ..." says the signal reached it). Ray
    prints them through its module's `print_to_stdstream` (a private hook: no public setting
    routes them), so that is what is wrapped; False where this Ray has no such function. Wrapped
    after ray.init: the printer ray.init registered for worker lines (and the raylet's log
    files, also "pid": "raylet") keeps Ray's function, and so the skip regex."""
    try:
        from ray._private import worker as ray_worker
    except ImportError:
        return False
    printer = getattr(ray_worker, "print_to_stdstream", None)
    if not callable(printer):
        return False
    if not isinstance(printer, functools.partial):  # wrapped once per process
        ray_worker.print_to_stdstream = functools.partial(_print_raylet_errors_only, printer)
    return True


def _print_raylet_errors_only(print_lines, data: dict, *args, **kwargs) -> None:
    if data.get("pid") != "raylet" or not _console["raylet_to_log"]:
        print_lines(data, *args, **kwargs)
        return
    for line in data.get("lines", []):  # printed here: the quiet skip regex would drop it in print_lines
        if line.startswith("WARNING") or stopping.stop_requested():  # a stop: Ray's processes die of it too
            logging.getLogger("ray.raylet").warning(line)
        else:
            print(f"(raylet) {line}", file=sys.stderr if data.get("is_err") else sys.stdout, flush=True)


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


class RayPathLoggersWarnOnly(logging.Filter):
    """Drops the INFO (and DEBUG) records of loggers that Ray names by a file path in its package
    (`logging.getLogger(__file__)`), such as Train V2's "Reporting training result ..." per report."""

    def __init__(self):
        super().__init__()
        import ray

        self.ray_dir = os.path.dirname(ray.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith(self.ray_dir)


def quiet_train_worker_logs() -> None:
    """Silence Train V2's per-report INFO line ("Reporting training result ..."); keep warnings.

    Train logs it under a logger named by its file path, which propagates to the worker's root
    logger (whose handlers Train configures: the console, its app log file); a filter on those
    handlers drops it (Python's logging API: `ray.train.LoggingConfig` filters `ray.train*` only)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RayPathLoggersWarnOnly) for f in handler.filters):
            handler.addFilter(RayPathLoggersWarnOnly())
