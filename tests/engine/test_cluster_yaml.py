"""cluster.yaml is a valid Ray cluster-launcher config, checked offline with Ray's own code.

`ray up` runs, in ray.autoscaler._private.commands._bootstrap_config:
  1. util.prepare_config: merges ray/autoscaler/aws/defaults.yaml (a file in the Ray
     package), merges setup commands, fills per-node-type min/max workers. Local only.
  2. AWSNodeProvider.fillout_available_node_types_resources: boto3 describe_instance_types,
     to auto-detect CPUs/GPUs of each instance type. Needs AWS.
  3. util.validate_config: the JSON schema ray/autoscaler/ray-schema.json plus a few
     cross-field checks. Local only.
  4. AWSNodeProvider.bootstrap_config: IAM role, key pair, subnets, security group. Needs AWS.
The offline path is 1 then 3, skipping 2 and 4. Skipping 2 is why cluster.yaml declares
`resources` on every node type (the schema requires the key; `ray up` would only add
auto-detected values to it). To be sure nothing reaches the network, these tests run with
sockets and boto3/botocore disabled.
"""

from __future__ import annotations

import copy
import re
import socket
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture
def offline(monkeypatch):
    """No sockets, no boto3: any attempt to reach AWS fails loudly instead of hanging."""

    def refuse(*args, **kwargs):
        raise AssertionError("cluster.yaml validation tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for mod in ("boto3", "botocore"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import boto3` now raises ImportError


def load_raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def prepared(config: dict) -> dict:
    """What `ray up` validates, minus the AWS look-ups (see the module docstring)."""
    config = prepare_config(copy.deepcopy(config))
    validate_config(config)
    return config


def head_and_gpu_worker(config: dict) -> tuple[dict, dict]:
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    gpu = [t for t in workers if t["resources"].get("GPU", 0) >= 1]
    assert len(gpu) == 1, f"expected exactly one GPU worker type, got {len(gpu)}"
    return head, gpu[0]


def test_cluster_yaml_is_valid_for_ray_and_keeps_its_promises(offline):
    raw = load_raw()
    config = prepared(raw)

    assert config["cluster_name"] == "rrf-ray"
    assert config["provider"]["type"] == "aws"
    assert config["provider"]["region"] == "us-west-2"
    assert isinstance(raw["provider"]["cache_stopped_nodes"], bool)

    head, gpu = head_and_gpu_worker(config)

    # GPU workers autoscale from zero, and the autoscaler knows they carry a GPU.
    assert gpu["min_workers"] == 0
    assert 1 <= gpu["max_workers"] <= config["max_workers"]
    assert gpu["resources"]["GPU"] >= 1
    assert re.match(r"(g|p)\d", gpu["node_config"]["InstanceType"]), gpu["node_config"]["InstanceType"]
    # Workers write checkpoints to S3 themselves: they need an instance profile.
    assert "IamInstanceProfile" in gpu["node_config"]

    # The head never offers a GPU, so no GPU trial lands on it, and it is a single node.
    assert head["resources"].get("GPU", 0) == 0
    assert not re.match(r"(g|p)\d", head["node_config"]["InstanceType"])
    assert head["max_workers"] == 0

    # The AMI is one value, used by both node types, and marked as a placeholder.
    assert head["node_config"]["ImageId"] == gpu["node_config"]["ImageId"]
    ami_lines = [ln for ln in CLUSTER_YAML.read_text().splitlines() if "REPLACE" in ln]
    assert ami_lines, "the AMI placeholder must be marked REPLACE"

    # One Ray Train worker of the sweep fits on one GPU node, or its trials never schedule.
    from rrf_ray.engine.loading import load_spec

    res = load_spec("maze2d").resources
    if res.use_gpu:
        assert gpu["resources"]["GPU"] >= res.gpus_per_worker
        assert gpu["resources"]["CPU"] >= res.cpus_per_worker

    # The checkout is synced to ~/rrf_ray, without .git and results.
    assert config["file_mounts"] == {"~/rrf_ray": "."}
    excludes = " ".join(config["rsync_exclude"])
    assert ".git" in excludes and "results" in excludes

    # Setup installs torch, then this project; head and workers both get it
    # (prepare_config merges setup_commands into head_/worker_setup_commands).
    for key in ("head_setup_commands", "worker_setup_commands"):
        cmds = config[key]
        torch = [i for i, c in enumerate(cmds) if re.search(r"pip install\b.*\btorch\b", c)]
        project = [i for i, c in enumerate(cmds) if re.search(r"pip install -e ~/rrf_ray\b", c)]
        assert torch and project, (key, cmds)
        assert torch[0] < project[0], "torch must be installed before the project"
    # The head's autoscaler launches EC2 workers through boto3.
    assert any("boto3" in c for c in config["head_setup_commands"])
    # Ray on the cluster is the Ray that validated (and will launch) this file.
    import ray

    pins = [m for c in config["setup_commands"] for m in re.findall(r"ray\[[^\]]*\]==([\w.]+)", c)]
    assert pins == [ray.__version__], f"pin ray=={ray.__version__} in setup_commands, found {pins}"

    # Start commands stop, then start Ray: the head with the autoscaler and a reachable
    # dashboard, the workers joining the head.
    head_cmds, worker_cmds = config["head_start_ray_commands"], config["worker_start_ray_commands"]
    assert head_cmds[0].strip() == "ray stop" and worker_cmds[0].strip() == "ray stop"
    head_start = " ".join(head_cmds[1:])
    for flag in ("ray start --head", "--port=6379", "--autoscaling-config=~/ray_bootstrap_config.yaml",
                 "--dashboard-host=0.0.0.0"):
        assert flag in head_start, flag
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(worker_cmds[1:])

    # The comments tell users what the YAML cannot: storage must be shared, and how to look.
    comments = "\n".join(ln for ln in CLUSTER_YAML.read_text().splitlines() if ln.lstrip().startswith("#"))
    for needle in ("--storage /mnt/shared", "s3://", "IamInstanceProfile", "iam:PassRole",
                   "ray dashboard cluster.yaml", "tensorboard --logdir", "--resume"):
        assert needle in comments, needle


def _unknown_top_level_key(c):
    c["gpu_workers"] = 4


def _node_type_without_node_config(c):
    del c["available_node_types"]["ray.worker.gpu"]["node_config"]


def _node_type_without_resources(c):
    del c["available_node_types"]["ray.worker.gpu"]["resources"]


def _fractional_gpu_resource(c):
    c["available_node_types"]["ray.worker.gpu"]["resources"]["GPU"] = 0.5


def _head_type_not_defined(c):
    c["head_node_type"] = "ray.head.missing"


def _min_workers_above_global_max(c):
    c["available_node_types"]["ray.worker.gpu"]["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize(
    "breakage, error, match",
    [
        (_unknown_top_level_key, jsonschema.ValidationError, "'gpu_workers' was unexpected"),
        (_node_type_without_node_config, jsonschema.ValidationError, "'node_config' is a required"),
        (_node_type_without_resources, jsonschema.ValidationError, "'resources' is a required"),
        (_fractional_gpu_resource, jsonschema.ValidationError, "is not of type 'integer'"),
        (_head_type_not_defined, ValueError, "head_node_type"),
        (_min_workers_above_global_max, ValueError, "min_workers"),
    ],
)
def test_broken_copies_are_rejected(offline, breakage, error, match):
    broken = load_raw()
    assert "ray.worker.gpu" in broken["available_node_types"]
    breakage(broken)
    with pytest.raises(error, match=match):
        prepared(broken)


def test_offline_fixture_really_blocks_the_network(offline):
    with pytest.raises(AssertionError, match="network"):
        socket.create_connection(("ec2.us-west-2.amazonaws.com", 443), timeout=1)
    with pytest.raises(ImportError):
        import boto3  # noqa: F401
