"""The tiny Maze2D sweep as a user sees it: a quiet console, and a finished sweep grown by a seed.

Its training runs use real Ray Train workers and Ray Data (`resources.local_mode=false`),
whose internals (Ray Train's PreemptionWatcher error, Ray Data's deprecation warning, C++
log lines) the console must not show: they stay in Ray's log directory, named in the first
lines. Then `--resume --set seeds=[0,1]` runs only the new seed's trial, leaves the old
result.json byte for byte, and the report covers both seeds; changing a model setting
instead is refused, naming the field.
"""

import csv
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# maze2d declares its growable fields in rrf_ray/maze2d/experiment.py; where it does not (yet),
# this module declares them for the test, as an experiment of a user's would.
MAZE2D_GROWABLE = textwrap.dedent("""
    from dataclasses import replace

    from rrf_ray.engine.registry import get_experiment, register

    maze2d = get_experiment("maze2d")
    if not maze2d.growable:
        register(replace(maze2d, growable=("mazes", "goals", "seeds")))
""")

RAY_INTERNALS = ("core_worker.cc", "logging.cc", "RayDeprecationWarning", "PreemptionWatcher")
ARGS = ["--set", "goals=[3]", "--set", "resources.local_mode=false"]


def sweep(tmp_path: Path, *args, timeout=900) -> subprocess.CompletedProcess:
    (tmp_path / "maze2d_growable.py").write_text(MAZE2D_GROWABLE)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RRF_RAY_EXPERIMENTS="maze2d_growable",
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "rrf_ray.sweep", "maze2d-tiny", "--storage", str(tmp_path / "results"),
                           *ARGS, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_tiny_sweep_console_is_quiet_and_the_sweep_grows_by_a_seed(tmp_path):
    root = tmp_path / "results" / "maze2d-tiny"
    first = sweep(tmp_path)
    console = first.stdout + first.stderr
    assert first.returncode == 0, console[-5000:]
    for noise in RAY_INTERNALS:
        assert noise not in console, f"{noise!r} on the console:\n{console[-5000:]}"
    assert "] step 100/100" in first.stdout and "Trial status" in first.stdout  # step lines, Tune's table
    logs = Path(re.search(r"\[ray\] Ray's own messages: (\S+) ", first.stdout).group(1))
    hidden = "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.err"))
    assert "PreemptionWatcher" in hidden  # Ray Train's internals went to Ray's logs, not away
    assert "RayDeprecationWarning" not in hidden  # fixed where it came from (engine.training.data_config)

    trial0 = root / "trials" / "umaze-goal3-seed0" / "result.json"
    before = trial0.read_bytes()
    grown = sweep(tmp_path, "--resume", "--set", "seeds=[0, 1]")
    assert grown.returncode == 0, (grown.stdout + grown.stderr)[-5000:]
    assert "seeds + [1]" in grown.stdout
    started = re.findall(r"\[(expert|reward)-umaze-g3-\w+\] starting", grown.stdout)
    assert started == ["expert", "reward"], grown.stdout[-3000:]  # one new trial's training runs, no others
    assert trial0.read_bytes() == before
    rows = list(csv.DictReader((root / "results.csv").open()))
    assert sorted((r["seed"], r["status"]) for r in rows) == [("0", "ok"), ("1", "ok")]

    refused = sweep(tmp_path, "--resume", "--set", "seeds=[0, 1]", "--set", "diffusion.dim=16", timeout=300)
    assert refused.returncode == 2 and "spec differs" in refused.stderr and "diffusion.dim" in refused.stderr
