"""Sweep storage at a URI: a real S3 protocol server (moto's), pyarrow's S3 client, local mirrors.

The mirror is what Minari and torch need (local files); these tests check that what one
node pushes another node (here: another mirror directory) pulls, that a directory counts
as finished only once its marker has been pushed after it, and that the tiny sweep runs
end to end with `--storage s3://...`, leaving its report and results in the bucket.
"""

import json
import os
import subprocess
import sys

import pytest

from rrf_ray.engine.artifacts import DONE, ArtifactStore
from rrf_ray.engine.storage import SweepStorage, join_uri


def test_join_uri_keeps_the_query_last():
    assert join_uri("s3://b/x?endpoint_override=h:1", "y", "z/") == "s3://b/x/y/z?endpoint_override=h:1"


def test_a_relative_directory_means_the_same_place_after_pickling(tmp_path, monkeypatch):
    """Tune runs trials in their own working directories: `--storage results` must not move."""
    import pickle

    monkeypatch.chdir(tmp_path)
    storage = SweepStorage("results", "sweep")
    assert storage.local == tmp_path / "results" / "sweep" and not storage.is_remote
    monkeypatch.chdir(tmp_path.parent)
    assert pickle.loads(pickle.dumps(storage)).local == tmp_path / "results" / "sweep"


def test_what_one_node_pushes_another_pulls(s3_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("RRF_RAY_CACHE", str(tmp_path / "node-a"))
    a = SweepStorage(s3_uri, "push-pull")
    (a.local / "trials" / "t1").mkdir(parents=True)
    (a.local / "trials" / "t1" / "result.json").write_text('{"status": "ok"}')
    a.push("trials/t1")
    monkeypatch.setenv("RRF_RAY_CACHE", str(tmp_path / "node-b"))
    b = SweepStorage(s3_uri, "push-pull")
    assert b.local != a.local and not (b.local / "trials").exists()
    assert b.exists("trials/t1/result.json") and b.holds_anything()
    assert b.read_text("trials/t1/result.json") == '{"status": "ok"}'
    assert (b.pull("trials/t1") / "result.json").read_text() == '{"status": "ok"}'
    # a newer version replaces the mirror's copy only when asked to refresh
    (a.local / "trials" / "t1" / "result.json").write_text('{"status": "failed"}')
    a.push("trials/t1")
    assert (b.pull("trials/t1") / "result.json").read_text() == '{"status": "ok"}'
    assert (b.pull("trials/t1", refresh=True) / "result.json").read_text() == '{"status": "failed"}'
    assert b.read_text("trials/nothing.json") is None


def test_an_artifact_is_trusted_only_after_its_marker(s3_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("RRF_RAY_CACHE", str(tmp_path / "node-a"))
    a = SweepStorage(s3_uri, "artifacts")
    source = tmp_path / "model"
    source.mkdir()
    (source / "state.pt").write_bytes(b"weights")
    # a crash after the upload but before the marker: the other node must not trust it
    (a.local / "artifacts" / "diffusers" / "k1").mkdir(parents=True)
    (a.local / "artifacts" / "diffusers" / "k1" / "state.pt").write_bytes(b"half")
    a.push("artifacts/diffusers/k1")
    monkeypatch.setenv("RRF_RAY_CACHE", str(tmp_path / "node-b"))
    b_store = ArtifactStore(SweepStorage(s3_uri, "artifacts"))
    assert not b_store.is_done("diffusers", "k1")
    ArtifactStore(a).publish("diffusers", "k1", source)
    assert b_store.is_done("diffusers", "k1")  # pulled on demand
    assert (b_store.path("diffusers", "k1") / "state.pt").read_bytes() == b"weights"
    assert (b_store.path("diffusers", "k1") / DONE).exists()


def test_a_bad_storage_uri_exits_2_naming_it():
    r = subprocess.run([sys.executable, "-m", "rrf_ray.sweep", "maze2d-tiny", "--storage", "nosuch://x/y"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--storage nosuch://x/y" in r.stderr


@pytest.mark.slow
def test_tiny_sweep_on_s3_storage(s3_uri, tmp_path):
    """Everything a user keeps ends up in the bucket; the driver's mirror is just a cache.
    A second driver on a fresh mirror resumes it without recomputing a trial."""
    env = {**os.environ, "RRF_RAY_CACHE": str(tmp_path / "driver-1")}
    args = [sys.executable, "-m", "rrf_ray.sweep", "maze2d-tiny", "--storage", s3_uri, "--set", "goals=[3]"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    storage = SweepStorage(s3_uri, "maze2d-tiny")
    result = json.loads(storage.read_text("trials/umaze-goal3-seed0/result.json"))
    assert result["status"] == "ok"
    for name in ("report.md", "results.csv", "figures/umaze.png", "spec.json",
                 "stage3-trials/tuner.pkl", "trials/umaze-goal3-seed0/heatmap.png"):
        assert storage.exists(name), name
    assert "umaze-goal3-seed0" in storage.read_text("results.csv")
    assert storage.exists("train"), "Ray Train's runs should be in the bucket too"

    # a used bucket path without --resume is refused; with it, a fresh mirror finishes at once
    r = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 2 and "--resume" in r.stderr
    env2 = {**os.environ, "RRF_RAY_CACHE": str(tmp_path / "driver-2")}
    r = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600, env=env2)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert json.loads(storage.read_text("trials/umaze-goal3-seed0/result.json")) == result
    assert "] starting:" not in r.stdout, "a finished trial was recomputed"
