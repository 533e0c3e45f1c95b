"""Connecting to Ray (a private local Ray unless a cluster is asked for) and keeping its console quiet."""

from __future__ import annotations

import logging
import os
import sys

import ray


def started_cluster_address() -> str | None:
    """The address a `ray start` on this machine recorded (None if there is none).

    Only `ray start` (and `ray up`'s head) records it; another driver's private local Ray does
    not, so a sweep never joins, and dies with, a Ray that another sweep started for itself.
    """
    try:
        from ray._private.services import find_bootstrap_address
    except ImportError:  # a Ray that moved it: join only when asked
        return None
    return find_bootstrap_address(None)


def init_ray(address: str | None = None, num_cpus: int | None = None, dashboard: bool | None = None,
             quiet: bool = True) -> None:
    """Idempotent `ray.init`: join a cluster when asked, else start a private local Ray.

    Joins `address`, else RAY_ADDRESS, else the cluster a `ray start` on this machine recorded;
    otherwise (or with address "local") starts a local Ray for this process alone, with
    `num_cpus` logical CPUs. Prints one line saying which Ray the run uses.
    """
    if ray.is_initialized():
        return
    kwargs = dict(logging_level=logging.WARNING if quiet else logging.INFO, log_to_driver=True)
    address = address or os.environ.get("RAY_ADDRESS") or started_cluster_address()
    if address and address != "local":
        context = ray.init(address=address, **kwargs)
        what = f"joined the Ray cluster at {address}"
    else:
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, **kwargs)
        what = "started a private local Ray"
    resources = ray.cluster_resources()
    dashboard_url = getattr(context, "dashboard_url", None)
    print(f"[ray] {what} ({ray.get_runtime_context().gcs_address}): {resources.get('CPU', 0):g} CPUs, "
          f"{resources.get('GPU', 0):g} GPUs" + (f", dashboard http://{dashboard_url}" if dashboard_url else ""),
          flush=True)


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
