"""The data CLI as a user runs it: good input makes a dataset, bad input exits 2 naming the culprit."""

import math
import os
import subprocess
import sys

import minari
import pytest


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "rrf_ray.data", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, culprit", [
    (["--maze", "spiral"], "unknown maze 'spiral'"),
    (["--maze", "umaze", "--goal", "9"], "goals 1..8, not goal 9"),
    (["--maze", "umaze", "--goal", "0"], "not goal 0"),
    (["--maze", "umaze", "--set", "mazes.umaze.goals=[[1,1],[2,1]]"], "maze 'umaze' goal 2 (2.0, 1.0): inside a wall"),
    (["--maze", "umaze", "--set", "data.bogus=1"], "data.bogus: unknown key"),
    (["--maze", "umaze", "--set", "data.action_noise=loud"], "data.action_noise"),
    (["--maze", "umaze", "--spec", "no-such-sweep"], "no sweep named 'no-such-sweep'"),
    (["--maze", "umaze", "--transitions", "-5"], "--transitions must be positive"),
])
def test_bad_input_exits_2_naming_the_culprit(tmp_path, args, culprit):
    r = run_cli("maze2d", *args, "--root", str(tmp_path))
    assert r.returncode == 2, r.stderr
    assert culprit in r.stderr
    assert "Traceback" not in r.stderr


def test_bad_yaml_file_exits_2(tmp_path):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("data:\n  base_transitions: 10\n  wrong_name: 3\n")
    r = run_cli("maze2d", "--maze", "umaze", "--spec", str(bad_key))
    assert r.returncode == 2 and "data.wrong_name: unknown key" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    r = run_cli("maze2d", "--maze", "umaze", "--spec", str(broken))
    assert r.returncode == 2 and "not valid YAML" in r.stderr


@pytest.mark.slow  # starts Ray
def test_acceptance_command_makes_a_minari_dataset(tmp_path):
    r = run_cli("maze2d", "--maze", "umaze", "--goal", "3", "--transitions", "20000", "--seed", "0",
                "--root", str(tmp_path), "--workers", "2")
    assert r.returncode == 0, r.stderr
    os.environ["MINARI_DATASETS_PATH"] = str(tmp_path)
    try:
        ds = minari.load_dataset("rrf/maze2d-umaze/goal3-v0")
    finally:
        os.environ["MINARI_DATASETS_PATH"] = "/tmp/rrf_ray-test-minari-unused"
    assert ds.total_steps >= 20000
    assert all(math.dist(ep.observations[-1, :2], (1.0, 1.0)) <= 0.5 for ep in ds.iterate_episodes())
    # a different spec for the same id is refused with exit 2
    r = run_cli("maze2d", "--maze", "umaze", "--goal", "3", "--transitions", "20000", "--seed", "1",
                "--root", str(tmp_path), "--workers", "2")
    assert r.returncode == 2 and "--overwrite" in r.stderr
