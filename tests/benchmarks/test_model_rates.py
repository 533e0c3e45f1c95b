"""benchmarks/model_rates.py at tiny sizes on the CPU (as CI runs it), and --dry-run's marking of its rates.

The benchmark must import no Ray (GPU machines that run it lack Ray); every figure it prints must
land in a YAML block that `estimate:` accepts, and --dry-run must say which rates were measured
(device, date) and which are default placeholders.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rrf_ray.engine.loading import load_spec
from rrf_ray.engine.spec import RATE_DEFAULTS, EstimateSpec

ROOT = Path(__file__).resolve().parents[2]

# Run the benchmark as __main__, then fail if anything imported Ray.
RUN_WITHOUT_RAY = """
import runpy, sys
sys.argv = ["model_rates.py"] + sys.argv[1:]
runpy.run_path("benchmarks/model_rates.py", run_name="__main__")
leaked = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
assert not leaked, f"the benchmark imported Ray: {leaked[:5]}"
print("NO RAY IMPORTED")
"""


def run_benchmark(profile: str, out: Path) -> str:
    proc = subprocess.run([sys.executable, "-c", RUN_WITHOUT_RAY, "--device", "cpu", "--profile", profile, "--tiny",
                           "--seconds", "0.2", "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("profile, rates", [
    ("locomotion", ["diffuser_samples_per_s", "reward_samples_per_s", "plans_per_s"]),
    ("irl", ["diffuser_samples_per_s", "irl_steps_per_s"]),
])
def test_benchmark_measures_every_rate_of_a_profile_without_ray(tmp_path, profile, rates):
    out = tmp_path / "rates.yaml"
    stdout = run_benchmark(profile, out)
    assert "NO RAY IMPORTED" in stdout
    assert stdout.strip().splitlines()[-2].startswith("RATIO ")
    block = yaml.safe_load(out.read_text())["estimate"]
    estimate = EstimateSpec.model_validate(block)  # the block is what `estimate:` accepts
    for name in rates:
        assert getattr(estimate, name) > 0
        assert f"{name}: " in stdout  # one printed line per figure
    assert "CPU" in estimate.device and estimate.date and estimate.precision == "fp32"


def test_dry_run_marks_default_and_measured_rates(tmp_path):
    from rrf_ray.maze2d.stages import dry_run

    default = dry_run(load_spec("maze2d-tiny"))
    assert default.count("DEFAULT placeholder") == 2  # diffuser and reward rates, both unmeasured
    assert f"{RATE_DEFAULTS['diffuser_samples_per_s']:,.0f}" in default

    out = tmp_path / "rates.yaml"
    run_benchmark("maze2d-tiny", out)
    block = yaml.safe_load(out.read_text())["estimate"]
    measured = dry_run(load_spec("maze2d-tiny", overrides=[f"estimate.{k}={v}" for k, v in block.items()]))
    assert "DEFAULT placeholder" not in measured
    assert measured.count(f"measured on {block['device']}, {block['date']}") == 2
    half = dry_run(load_spec("maze2d-tiny", overrides=[f"estimate.device={block['device']}",
                                                        f"estimate.reward_samples_per_s={block['reward_samples_per_s']}"]))
    assert half.count("DEFAULT placeholder") == 1 and half.count(f"measured on {block['device']}") == 1


def test_locomotion_and_irl_dry_runs_estimate_from_their_rates():
    from rrf_ray.irl.stages import dry_run as irl_dry_run
    from rrf_ray.locomotion.stages import dry_run as locomotion_dry_run

    loco = locomotion_dry_run(load_spec("locomotion-tiny"))
    assert "guided plans/s" in loco and "DEFAULT placeholder" in loco
    irl = irl_dry_run(load_spec("irl-tiny", overrides=["estimate.irl_steps_per_s=3.5", "estimate.device=GPU X"]))
    assert "Algorithm 4 steps/s: 3.5 (measured on GPU X)" in irl
