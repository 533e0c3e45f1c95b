"""`python -m rrf_ray.sweep` as a user runs it: dry run, bad input, and the tiny sweep end to end."""

import json
import os
import signal
import subprocess
import sys
import time

import matplotlib.image as mpimg
import pytest

from rrf_ray.data.minari_io import DatasetError
from rrf_ray.engine.loading import load_spec
from rrf_ray.engine.stages import SweepPaths
from rrf_ray.engine.storage import SweepStorage
from rrf_ray.maze2d.stages import base_key, expert_key, reward_key, shards_key, trial_table, windows


def sweep(*args, **kw):
    return subprocess.run([sys.executable, "-m", "rrf_ray.sweep", *args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 120), **kw)


def test_dry_run_of_the_paper_sweep_lists_160_trials():
    r = sweep("maze2d", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "160 trials" in r.stdout
    rows = [line for line in r.stdout.splitlines() if "-goal" in line and "-seed" in line]
    assert len(rows) == 160
    assert "large-goal8-seed4" in r.stdout
    assert "GPU-hours" in r.stdout


def test_bad_spec_exits_2_naming_the_field():
    r = sweep("maze2d", "--dry-run", "--set", "reward.hiden=[1]")
    assert r.returncode == 2 and "reward.hiden: unknown key" in r.stderr
    r = sweep("no-such-sweep")
    assert r.returncode == 2 and "no sweep named" in r.stderr


def test_refuses_a_used_storage_without_resume(tmp_path):
    (tmp_path / "maze2d-tiny").mkdir()
    (tmp_path / "maze2d-tiny" / "spec.json").write_text(load_spec("maze2d-tiny").model_dump_json())
    r = sweep("maze2d-tiny", "--storage", str(tmp_path))
    assert r.returncode == 2 and "--resume" in r.stderr
    r = sweep("maze2d-tiny", "--storage", str(tmp_path), "--resume", "--set", "seeds=[5]")
    assert r.returncode == 2 and "spec differs" in r.stderr


def test_artifact_keys_follow_what_determines_them():
    spec = load_spec("maze2d-tiny")
    other_reward = load_spec("maze2d-tiny", ["reward.learning_rate=0.5"])
    assert base_key(spec, "umaze", 0) == base_key(other_reward, "umaze", 0)
    assert shards_key(spec, "umaze", 3, 0) == shards_key(other_reward, "umaze", 3, 0)
    assert reward_key(spec, "umaze", 3, 0) != reward_key(other_reward, "umaze", 3, 0)
    assert expert_key(spec, "umaze", 3, 0) != expert_key(spec, "umaze", 6, 0)
    other_data = load_spec("maze2d-tiny", ["data.action_noise=0.3"])
    assert base_key(spec, "umaze", 0) != base_key(other_data, "umaze", 0)
    assert [t["trial_id"] for t in trial_table(spec)] == ["umaze-goal3-seed0", "umaze-goal6-seed0"]


@pytest.mark.slow
def test_tiny_sweep_killed_then_resumed_completes_without_recomputing(tmp_path):
    """SIGKILL the driver once the first trial has finished; --resume completes the sweep and
    leaves that trial's result and reward untouched. Then the report is complete."""
    root = tmp_path / "maze2d-tiny"
    first = root / "trials" / "umaze-goal3-seed0" / "result.json"
    proc = subprocess.Popen([sys.executable, "-m", "rrf_ray.sweep", "maze2d-tiny", "--storage", str(tmp_path)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            if first.exists() and json.loads(first.read_text())["status"] == "ok":
                break
            assert proc.poll() is None, "the sweep ended before its first trial finished"
            time.sleep(1)
        else:
            pytest.fail("first trial did not finish within 600 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    stamp = first.stat().st_mtime_ns
    spec = load_spec("maze2d-tiny")
    reward_done = root / "artifacts" / "rewards" / reward_key(spec, "umaze", 3, 0) / "DONE"
    reward_stamp = reward_done.stat().st_mtime_ns

    r = sweep("maze2d-tiny", "--storage", str(tmp_path), "--resume", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert first.stat().st_mtime_ns == stamp, "the finished trial was recomputed"
    assert reward_done.stat().st_mtime_ns == reward_stamp
    results = (root / "results.csv").read_text().splitlines()
    assert len(results) == 3 and all(",ok," in line for line in results[1:])
    report = (root / "report.md").read_text()
    assert "78.12" in report  # the paper's figure beside ours
    figure = root / "figures" / "umaze.png"
    assert mpimg.imread(figure).shape[0] > 50
    # every trial's metrics reached Tune: its result files hold the evaluation metrics
    tune_results = list((root / "stage3-trials").rglob("result.json"))
    assert any("goal_recovered" in p.read_text() for p in tune_results)


def test_missing_maze2d_dataset_says_how_to_make_it(tmp_path):
    spec = load_spec("maze2d-tiny")
    paths = SweepPaths(SweepStorage(str(tmp_path), spec.name))
    with pytest.raises(DatasetError, match=r"python -m rrf_ray.data maze2d --maze umaze --goal 3 --root"):
        windows(spec, paths, "umaze", 3, "train")
