"""Sweep storage at a URI: a real S3 protocol server (moto's), pyarrow's S3 client, local mirrors.

The mirror is what Minari and torch need (local files); these tests check that what one
node pushes another node (here: another mirror directory) pulls, that a directory counts
as finished only once its marker has been pushed after it. The tiny sweep end to end on a
bucket (report and results in it, a second driver on a fresh mirror resuming) runs on a
multi-node cluster that loses a node: tests/maze2d/test_node_loss.py.
"""

import subprocess
import sys

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
