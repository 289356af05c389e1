"""A cluster of another Ray or Python than the driver's is refused at connect, with exit 2 naming both.

The real multi-node sweeps (tests/test_cluster.py, `make test-cluster`) run `check_versions`
against live nodes of matching versions; here the mismatches are made by hand.
"""

from __future__ import annotations

import copy

import pytest
import yaml
from tiny_sweep import TINY

from orchestrator import sweep
from orchestrator.runtime import cluster
from orchestrator.runtime.cluster import VersionMismatch, check_versions, connect_ray, local_versions


def test_local_versions_are_ray_and_python_minor():
    import sys

    import ray

    assert local_versions() == (ray.__version__, f"{sys.version_info.major}.{sys.version_info.minor}")


def test_matching_nodes_pass(monkeypatch):
    monkeypatch.setattr(cluster, "_node_versions", lambda: {"10.0.0.1": local_versions(),
                                                            "10.0.0.2": local_versions()})
    check_versions()


@pytest.mark.parametrize("other", [("2.49.0", None), (None, "3.10")], ids=["ray", "python"])
def test_a_node_of_other_versions_is_named_with_both(monkeypatch, other):
    ours = local_versions()
    theirs = tuple(o or v for o, v in zip(other, ours))
    monkeypatch.setattr(cluster, "_node_versions", lambda: {"10.0.0.1": ours, "10.0.0.2": theirs})
    with pytest.raises(VersionMismatch) as err:
        check_versions()
    text = str(err.value)
    assert f"Ray {ours[0]}, Python {ours[1]}" in text  # ours
    assert f"10.0.0.2: Ray {theirs[0]}, Python {theirs[1]}" in text  # theirs, with the node
    assert "10.0.0.1" not in text  # a matching node is not blamed


def test_rays_own_version_check_becomes_a_version_mismatch(monkeypatch):
    import ray

    def init(**_):
        raise RuntimeError("Version mismatch: The cluster was started with:\n    Ray: 2.49.0\n    Python: 3.10.12\n"
                           "This process on node 10.0.0.9 was started with:\n    Ray: 2.60.0\n    Python: 3.11.7\n")

    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(VersionMismatch, match="Ray: 2.49.0 Python: 3.10.12 .* Ray: 2.60.0"):
        connect_ray("10.0.0.9:6379")


def test_other_connect_failures_are_not_hidden(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda **_: (_ for _ in ()).throw(RuntimeError("no cluster at 10.0.0.9")))
    with pytest.raises(RuntimeError, match="no cluster") as err:
        connect_ray("10.0.0.9:6379")
    assert not isinstance(err.value, VersionMismatch)


def test_the_sweep_exits_2_naming_both_and_leaves_nothing(monkeypatch, tmp_path, capsys):
    def connect(address, verbose):
        raise VersionMismatch("this process runs Ray 2.60.0, Python 3.11, but the cluster's nodes run "
                              "10.0.0.2: Ray 2.49.0, Python 3.10")

    monkeypatch.setattr(sweep, "connect_ray", connect)
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(copy.deepcopy(TINY)))
    storage = tmp_path / "results"
    assert sweep.main([str(spec), "--storage", str(storage), "--address", "10.0.0.1:6379"]) == 2
    err = capsys.readouterr().err
    assert "Ray 2.60.0" in err and "Ray 2.49.0" in err and "Traceback" not in err
    assert not storage.exists()  # the folders the storage probe made are removed, the lease released
