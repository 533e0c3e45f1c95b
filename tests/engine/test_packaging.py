"""A plain (non-editable) install ships the sweep specs: `--list` and loading by name work from any directory."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_a_built_wheel_carries_the_sweeps_and_finds_them_from_another_directory(tmp_path):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(wheels), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    wheel = next(wheels.glob("rrf_ray-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {Path(n).stem for n in names if n.startswith("rrf_ray/sweeps/") and n.endswith(".yaml")}
    assert {"maze2d", "maze2d-smoke", "locomotion-cpu", "irl-umaze", "sd"} <= shipped
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import rrf_ray, sys; from rrf_ray.engine.loading import load_spec, list_sweeps; "
            "assert rrf_ray.__file__.startswith(sys.argv[1]), rrf_ray.__file__; "
            "s = load_spec('maze2d-cpu'); print(s.name, sorted(s.mazes), len(list_sweeps()))")
    r = subprocess.run([sys.executable, "-c", code, str(site)], cwd=elsewhere, capture_output=True, text=True,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    name, mazes, n = r.stdout.split(" ", 1)[0], r.stdout.split("[")[1].split("]")[0], int(r.stdout.split()[-1])
    assert name == "maze2d-cpu" and mazes == "'large', 'medium', 'open', 'umaze'"  # its base: maze2d-smoke, found
    assert n == len(shipped)
