"""Ray start-up: a sweep joins a cluster only when asked; otherwise each gets a private local Ray."""

import os
import signal
import subprocess
import sys
import textwrap
import time

HOLD_RAY = textwrap.dedent("""
    import sys, time
    import ray
    from rrf_ray.engine.ray_runtime import init_ray
    init_ray(None, num_cpus=1, dashboard=False)
    @ray.remote(num_cpus=0.1)
    def ping():
        return "pong"
    print("READY", ray.get(ping.remote()), flush=True)
    if sys.argv[1] == "hold":
        time.sleep(300)
    time.sleep(2)
    print("STILL", ray.get(ping.remote()), flush=True)
""")


def start(mode: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-c", HOLD_RAY, mode], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 120) -> list[str]:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.strip())
        if line.startswith(marker):
            return lines
    raise AssertionError(f"no {marker!r} line; got: {lines[-20:]}")


def test_two_drivers_get_their_own_ray_and_one_dying_leaves_the_other(tmp_path):
    first = start("hold")
    try:
        first_lines = read_until(first, "READY")
        second = start("run")
        try:
            second_lines = read_until(second, "READY")
            ray_line = lambda lines: next(ln for ln in lines if ln.startswith("[ray]"))  # noqa: E731
            assert "started a private local Ray" in ray_line(first_lines)
            assert "started a private local Ray" in ray_line(second_lines)
            assert ray_line(first_lines).split("(")[1] != ray_line(second_lines).split("(")[1]  # two GCS addresses
            os.killpg(first.pid, signal.SIGKILL)  # the first driver dies with its Ray ...
            first.wait()
            assert read_until(second, "STILL")[-1] == "STILL pong"  # ... and the second's Ray still works
            assert second.wait(timeout=60) == 0
        finally:
            if second.poll() is None:
                os.killpg(second.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
