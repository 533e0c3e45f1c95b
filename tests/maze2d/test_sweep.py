"""`python -m rrf_ray.sweep` as a user runs it: dry run, bad input, keys (the tiny sweep end to end: test_tiny_sweep_lifecycle)."""

import subprocess
import sys

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


def test_missing_maze2d_dataset_says_how_to_make_it(tmp_path):
    spec = load_spec("maze2d-tiny")
    paths = SweepPaths(SweepStorage(str(tmp_path), spec.name))
    with pytest.raises(DatasetError, match=r"python -m rrf_ray.data maze2d --maze umaze --goal 3 --root"):
        windows(spec, paths, "umaze", 3, "train")
