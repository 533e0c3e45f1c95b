"""The quiet console through Ray's public settings (rrf_ray.engine.ray_runtime): Ray's log
deduplicator never folds step lines (RAY_DEDUP_LOGS_ALLOW_REGEX) and, quiet, prints no other
worker line (RAY_DEDUP_LOGS_SKIP_REGEX), both read by Ray when `ray` is imported; a worker's
other lines stay in Ray's log directory. (test_ray_runtime.py covers a driver that imported
Ray first, where the module falls back to setting Ray's deduplicators directly.)"""

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

STEPS = textwrap.dedent("""
    import sys, time
    from rrf_ray.engine.ray_runtime import init_ray, set_verbose  # first: it sets the variables Ray reads
    set_verbose(sys.argv[1] == "verbose")
    import ray
    init_ray(None, num_cpus=1, dashboard=False)

    @ray.remote(num_cpus=0.1)
    class Trial:
        def ready(self):
            return True

        def run(self, seed):
            for step in (1000, 2000):
                print(f"[seed-{seed}] step {step}/10000 loss 0.5 (1000 samples/s)", flush=True)
            print(f"an ordinary line of worker {seed}", flush=True)

    trials = [Trial.remote() for _ in range(3)]
    ray.get([t.ready.remote() for t in trials])  # all three up: their lines arrive within Ray's 5 s window
    ray.get([t.run.remote(seed) for seed, t in enumerate(trials)])
    from ray._private import worker  # as Ray's driver prints what its raylet pushes (the one hook kept)
    worker.print_to_stdstream({"lines": ["WARNING: 9 PYTHON worker processes have been started", "a raylet error"],
                               "pid": "raylet", "is_err": False}, ignore_prefix=False)
    time.sleep(3)  # Ray's log monitor forwards worker lines to the driver within a second or so
    print("DONE", flush=True)
""")
STEP_LINES = [f"[seed-{seed}] step {step}/10000 loss 0.5" for seed in range(3) for step in (1000, 2000)]


def run_steps(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_DEDUP_LOGS")}
    r = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and "DONE" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    return r.stdout + r.stderr  # after DONE: what Ray's deduplicator still held, flushed at shutdown


def test_ray_reads_the_console_settings_when_imported_after_this_module():
    """The public way works in this Ray: the variables this module sets on import are what
    Ray's deduplicators use (no Ray started; this checks Ray's private objects, as a canary)."""
    code = textwrap.dedent("""
        import rrf_ray.engine.ray_runtime as rt
        from ray._private import ray_logging
        d = ray_logging.stdout_deduplicator
        print(d.allow_re.pattern == rt.STEP_LINE.pattern, d.skip_re.pattern == rt.NOT_A_STEP_LINE)
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_DEDUP_LOGS")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.stdout.split() == ["True", "True"], r.stdout + r.stderr[-2000:]


@pytest.mark.slow  # starts Ray
def test_every_trials_step_lines_reach_the_quiet_console_and_other_lines_the_log_directory():
    quiet = run_steps("quiet")
    for line in STEP_LINES:  # three processes' lines that differ only in words with digits: none folded
        assert line in quiet, quiet
    assert "repeated" not in quiet, quiet
    assert "an ordinary line of worker" not in quiet, quiet  # not a step line: Ray's log directory only
    logs = Path(re.search(r"\[ray\] Ray's own messages: (\S+) ", quiet).group(1))
    workers = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.out"))
    for seed in range(3):
        assert f"an ordinary line of worker {seed}" in workers
    assert "(raylet) a raylet error" in quiet  # the raylet's errors still print ...
    assert "9 PYTHON worker processes" not in quiet  # ... its warnings go to the driver's log
    assert "WARNING: 9 PYTHON worker processes" in (logs / "rrf_ray-driver.log").read_text()


@pytest.mark.slow  # starts Ray
def test_verbose_shows_every_line_and_ray_folds_only_the_others():
    verbose = run_steps("verbose")
    for line in STEP_LINES:
        assert line in verbose, verbose
    assert "[ray] Ray's own messages" not in verbose
    assert "an ordinary line of worker" in verbose
    assert "WARNING: 9 PYTHON worker processes" in verbose and "a raylet error" in verbose
    # Ray's deduplication is on: the ordinary lines (equal but for a digit) are folded, the step lines never
    assert re.search(r"an ordinary line of worker \d\S* \[repeated 2x across cluster\]", verbose), verbose
    assert verbose.count("an ordinary line of worker") == 2, verbose


def test_train_v2_per_report_info_is_dropped_and_other_records_kept():
    """quiet_train_worker_logs: Train V2 logs "Reporting training result ..." (INFO, each report)
    under a logger named by its file path, which `ray.train.LoggingConfig` cannot reach."""
    from ray.train.v2._internal.execution import context  # canary: where Train V2 logs it in this Ray

    from rrf_ray.engine.ray_runtime import RayPathLoggersWarnOnly, quiet_train_worker_logs

    assert context.logger.name == context.__file__
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.INFO
    try:
        quiet_train_worker_logs()
        quiet_train_worker_logs()  # once per handler
        assert sum(isinstance(f, RayPathLoggersWarnOnly) for f in handler.filters) == 1
        context.logger.info("Reporting training result 1")
        context.logger.warning("a warning of Train's")
        logging.getLogger("rrf_ray.test").info("a line of ours")
    finally:
        root.removeHandler(handler)
        root.level = level
        for h in root.handlers:
            for f in [f for f in h.filters if isinstance(f, RayPathLoggersWarnOnly)]:
                h.removeFilter(f)
    assert [r.getMessage() for r in records] == ["a warning of Train's", "a line of ours"]
