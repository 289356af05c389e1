"""The Ray cluster a sweep runs on: connecting, what it can ever provide, where drivers go.

On a cluster started from `cluster.yaml` the head node advertises the custom
resource `pdiff_head` and no CPU: the sweep's small driver tasks (one per cell
in each stage) ask for a sliver of `pdiff_head`, so they stay on the head, and
every training run and trial goes to the workers.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import ray
import ray._private.worker
import yaml
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from orchestrator.spec import Resources, SpecError, SweepSpec
from orchestrator.store.tables import Store

__all__ = ["HEAD_RESOURCE", "VersionMismatch", "connect_ray", "check_versions", "driver_options", "check_resources",
           "check_storage", "probe_storage", "missing_local_dirs", "remove_created"]

HEAD_RESOURCE = "pdiff_head"
# Where `ray up` leaves the cluster-launcher config on the head node.
AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml").expanduser()


def connect_ray(address: str | None, verbose: bool = False) -> None:
    """Join the cluster at `address` (or $RAY_ADDRESS), else start an embedded local Ray.

    Unless `verbose`, Ray's own output stays in its log files (`<temp dir>/session_latest/logs`,
    /tmp/ray by default): its workers' output is not forwarded to this console and its driver
    logs only warnings, so the console holds the sweep's lines alone."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runtime_env = {"env_vars": {
        "OMP_WAIT_POLICY": "PASSIVE",  # OpenMP spin-waiting makes torch 5-10x slower when trials share cores
        "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",  # Train would echo every worker print a second time
        "RAY_USAGE_STATS_ENABLED": "0",
    }}
    quiet = {} if verbose else {"log_to_driver": False, "logging_level": logging.WARNING}
    if not verbose:  # The raylet's warnings ("N PYTHON worker processes have been started") reach the
        # console through this private function even without log_to_driver; they are in raylet.out too.
        ray._private.worker.print_to_stdstream = lambda data, ignore_prefix: None
    if address or os.environ.get("RAY_ADDRESS"):
        try:
            ray.init(address=address, runtime_env=runtime_env, **quiet)
        except RuntimeError as err:  # Ray's own check: "Version mismatch: The cluster was started with ..."
            if "version mismatch" in str(err).lower():
                raise VersionMismatch(" ".join(str(err).split())) from None
            raise
        check_versions()
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # one local node: no token to share
        # "local", not None: None would join whatever /tmp/ray/ray_current_cluster names (another
        # session's cluster, or a dead one it then waits on), which is not what "embedded" means.
        ray.init(address="local", runtime_env=runtime_env, **quiet)


class VersionMismatch(RuntimeError):
    """The cluster runs another Ray or Python than this process: pickled tasks and Train / Tune
    state would not travel between them. The sweep stops with exit 2 naming both."""


def local_versions() -> tuple[str, str]:
    """(Ray version, Python major.minor): what must match across the driver and every node
    (Ray's own rule: a Python patch release may differ)."""
    return ray.__version__, "%d.%d" % sys.version_info[:2]


def _node_versions() -> dict[str, tuple[str, str]]:
    """Each live node's (Ray, Python), from a zero-CPU task pinned to it."""
    probe = ray.remote(num_cpus=0)(local_versions)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = [probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes]
    return {n.get("NodeManagerAddress") or n["NodeID"]: tuple(v) for n, v in zip(nodes, ray.get(refs, timeout=120))}


def check_versions() -> None:
    """Every node of a joined cluster must run this process's Ray and Python (cluster.yaml
    installs them from constraints.txt with python3.11): raise VersionMismatch naming both."""
    ours = local_versions()
    theirs = {node: v for node, v in _node_versions().items() if v != ours}
    if theirs:
        listed = "; ".join(f"{node}: Ray {ray_v}, Python {py}" for node, (ray_v, py) in sorted(theirs.items()))
        raise VersionMismatch(f"this process runs Ray {ours[0]}, Python {ours[1]}, but the cluster's nodes run "
                              f"{listed}; install the versions of constraints.txt on both sides")


def _live_nodes() -> list[dict[str, float]]:
    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def driver_options() -> dict[str, Any]:
    """Ray options for the sweep's driver tasks: pinned to the head where the cluster marks one."""
    if any(HEAD_RESOURCE in r for r in _live_nodes()):
        return {"resources": {HEAD_RESOURCE: 0.001}}
    return {}


def _launchable_nodes() -> list[dict[str, float]]:
    """Node types the autoscaler may still start (from the launcher config on a `ray up` head)."""
    if not AUTOSCALER_CONFIG.is_file():
        return []
    config = yaml.safe_load(AUTOSCALER_CONFIG.read_text()) or {}
    return [dict(t.get("resources") or {}) for t in (config.get("available_node_types") or {}).values()
            if t.get("max_workers", 0) > 0]


def _fits(node: dict[str, float], res: Resources) -> bool:
    return node.get("CPU", 0) >= res.cpus and node.get("GPU", 0) >= res.gpus


def check_resources(spec: SweepSpec) -> None:
    """Every request must fit on some node that exists or can be launched: otherwise Ray
    would keep it pending forever and only warn once a minute."""
    nodes, launchable = _live_nodes(), _launchable_nodes()
    have = "; ".join(f"{r.get('CPU', 0):g} CPU / {r.get('GPU', 0):g} GPU" for r in nodes)
    if launchable:
        have += " + launchable types: " + "; ".join(f"{r.get('CPU', 0):g} CPU / {r.get('GPU', 0):g} GPU"
                                                     for r in launchable)
    for field, res in (("resources.sources", spec.source_resources), ("resources.trials", spec.trial_resources)):
        if not any(_fits(r, res) for r in nodes + launchable):
            raise SpecError(spec.source_file, field,
                            f"asks for {res.cpus:g} CPU / {res.gpus:g} GPU per worker, but no node of this "
                            f"cluster can ever give that (nodes: {have})")
    src = spec.source_resources
    if src.workers > 1 and not launchable:
        slots = sum(min(int(r.get("CPU", 0) // src.cpus),
                        int(r.get("GPU", 0) // src.gpus) if src.gpus else 1 << 30) for r in nodes)
        if slots < src.workers:
            raise SpecError(spec.source_file, "resources.sources.workers",
                            f"{src.workers} workers of {src.cpus:g} CPU / {src.gpus:g} GPU do not fit on this "
                            f"cluster at once (room for {slots}; nodes: {have})")


def check_storage(spec: SweepSpec, store: Store, shared: bool) -> None:
    """On several nodes every writer must reach one place: a local folder only if it is a shared mount."""
    nodes = len(_live_nodes()) + (1 if _launchable_nodes() else 0)
    if store.is_local and nodes > 1 and not shared:
        raise SpecError(spec.source_file, "storage",
                        f"{store.storage!r} is a local folder but the cluster has several nodes, which would each "
                        f"write their own results: use s3://bucket/prefix (or another pyarrow URI), or pass "
                        f"--shared-storage if this folder is a mount every node shares")


def probe_storage(spec: SweepSpec, store: Store) -> list[str]:
    """Before anything runs (and before Ray starts): the sweep's folder must be writable.

    Creates `<storage>/<name>` where missing, writes and removes a small file in it, and
    returns the local folders it created, so that a run stopping with exit 2 can remove
    them again (`remove_created`): nothing is left behind. Raises SpecError naming
    `storage` for a file where a folder should be, a read-only folder, an unknown URI
    scheme or an unreachable bucket."""
    created: list[str] = []
    try:
        if store.is_local:
            _make_local_dirs(spec, store.root, created)
        else:
            store.fs.create_dir(store.root, recursive=True)
        probe = store.path(f".probe-{uuid.uuid4().hex}")
        with store.fs.open_output_stream(probe) as sink:
            sink.write(b"pdiff-sweep storage probe\n")
        store.fs.delete_file(probe)
    except SpecError:
        remove_created(created)
        raise
    except (OSError, ValueError) as err:  # pyarrow raises OSError subclasses and ArrowInvalid (a ValueError)
        remove_created(created)
        text = str(err).strip()
        reason = getattr(err, "strerror", None) or (text.splitlines()[0] if text else type(err).__name__)
        raise SpecError(spec.source_file, "storage", f"cannot write in {store.uri} ({reason}); the sweep needs "
                                                     f"a writable folder or a reachable bucket") from None
    return created


def _make_local_dirs(spec: SweepSpec, root: str, created: list[str]) -> None:
    for folder in reversed(missing_local_dirs(spec, root)[1]):
        os.mkdir(folder)
        created.append(folder)


def missing_local_dirs(spec: SweepSpec, root: str) -> tuple[str, list[str]]:
    """The nearest existing folder at or above `root`, and the folders below it still missing (deepest
    first); SpecError where a file stands in the way. Reads only: also the dry run's check."""
    missing = []
    path = root
    while not os.path.lexists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    if os.path.lexists(path) and not os.path.isdir(path):
        what = "a file" if os.path.isfile(path) else "not a folder"
        raise SpecError(spec.source_file, "storage", f"{path} is {what}; the sweep's storage must be a folder")
    return path, missing


def remove_created(created: list[str]) -> None:
    """Remove the folders `probe_storage` created, deepest first, where they are still empty."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            break
