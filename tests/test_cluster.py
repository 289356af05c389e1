"""Clusters: cluster.yaml checked with Ray's own schema; real multi-node sweeps on this machine."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from tiny_sweep import CELLS, TINY, sweep_command, sweep_env

from orchestrator.store.tables import Store

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_schema_and_makes_our_choices():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(raw, schema)
    validate_config(prepare_config(copy.deepcopy(raw)))

    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    workers = {name: t for name, t in types.items() if name != raw["head_node_type"]}
    # The head runs drivers only: no CPU, no GPU for the scheduler, the driver resource.
    assert head["resources"]["CPU"] == 0 and head["resources"].get("GPU", 0) == 0
    assert head["resources"]["pdiff_head"] >= 1
    start = " ".join(raw["head_start_ray_commands"])
    assert "--num-cpus=0" in start and "pdiff_head" in start
    assert "--dashboard-host=127.0.0.1" in start  # the dashboard is reached through an SSH forward
    assert "InstanceMarketOptions" not in head["node_config"]  # on-demand head
    # GPU workers autoscale from zero and are spot machines.
    assert workers and all(t["min_workers"] == 0 < t["max_workers"] for t in workers.values())
    assert all(t["resources"]["GPU"] >= 1 for t in workers.values())
    assert all(t["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for t in workers.values())
    assert raw["idle_timeout_minutes"] > 0
    # Setup installs this project from the synced working tree.
    synced = [remote for remote, local in raw["file_mounts"].items() if local == "."]
    assert synced and any(f"pip install" in c and synced[0].replace("/home/ubuntu", "~") in c
                          for c in raw["setup_commands"])
    assert "0.0.0.0/0" not in (ROOT / "cluster.yaml").read_text()
    # The interpreter and the Ray are chosen, not inherited from the image: the venv is built from
    # python3.11 and installed under constraints.txt, whose Ray is the one these tests run.
    setup = " ".join(raw["setup_commands"])
    assert "python3.11 -m venv ~/pdiff-venv" in setup and "python3 -m venv" not in setup
    assert "-c ~/pdiff-sweep/constraints.txt" in setup
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().split()
                if "==" in line and not line.startswith("#"))
    assert pins["ray"] == ray.__version__
    # Datasets go to one folder per node, shared by all jobs there (pdiff.data locks it per download).
    assert all("PDIFF_DATA=" in c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
               if " ray start" in c)


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "resources": {"pdiff_head": 1}})
    yield c
    c.shutdown()


def _spec(tmp_path: Path, **resources) -> Path:
    spec = copy.deepcopy(TINY)
    spec["pdiff"]["num_samples"] = 2
    spec["resources"] = resources
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.cluster
def test_local_storage_is_refused_on_several_nodes(cluster, tmp_path):
    cluster.add_node(num_cpus=1)
    proc = subprocess.run(sweep_command(_spec(tmp_path), tmp_path / "out", "--address", cluster.address),
                          cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "storage: " in proc.stderr and "--shared-storage" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.cluster
def test_sweep_spreads_over_nodes_and_trials_go_to_the_gpu_node(cluster, tmp_path):
    cpu_node = cluster.add_node(num_cpus=1)
    gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)  # logical GPU: placement without hardware
    spec = _spec(tmp_path, sources={"cpus": 1}, trials={"cpus": 1, "gpus": 0.5})
    proc = subprocess.run(sweep_command(spec, tmp_path, "--address", cluster.address, "--shared-storage"),
                          cwd=ROOT, env=sweep_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    store = Store(str(tmp_path), "tiny")
    sources, trials = store.read_pandas("sources"), store.read_pandas("trials")
    assert len(sources) == CELLS and len(trials) == CELLS * 2 and (trials.status == "completed").all()
    assert len(store.read_pandas("generated")) == CELLS * 2 * 8
    nodes = {cpu_node.node_id, gpu_node.node_id}
    assert set(sources.node_id) <= nodes and set(trials.node_id) == {gpu_node.node_id}
    assert len(set(sources.node_id) | set(trials.node_id)) == 2  # work ran on more than one node
    assert cluster.head_node.node_id not in set(sources.node_id) | set(trials.node_id)


def _trial_actor_on(node_id: str) -> bool:
    import ray._private.state as state

    return any(a["Address"]["NodeID"] == node_id and a["State"] == "ALIVE"
               and a["ActorClassName"] == "ImplicitFunc"  # a Tune function trial
               for a in state.actors().values())


@pytest.mark.cluster
def test_losing_a_node_mid_sweep_retries_its_trials(cluster, tmp_path):
    import ray

    keep = cluster.add_node(num_cpus=1)
    doomed = cluster.add_node(num_cpus=1)
    spec = _spec(tmp_path, sources={"cpus": 1}, trials={"cpus": 1})
    proc = subprocess.Popen(sweep_command(spec, tmp_path, "--address", cluster.address, "--shared-storage"),
                            cwd=ROOT, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ray.init(address=cluster.address)
    try:
        deadline = time.monotonic() + 400
        while not _trial_actor_on(doomed.node_id):  # a stage-2 trial is running there
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "no trial was ever scheduled on the second worker"
            time.sleep(0.5)
        cluster.remove_node(doomed, allow_graceful=False)
        out, _ = proc.communicate(timeout=600)
    finally:
        ray.shutdown()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]

    store = Store(str(tmp_path), "tiny")
    trials = store.read_pandas("trials")
    generated = store.read_pandas("generated", columns=["cell_id", "trial_id", "index"])
    assert len(trials) == CELLS * 2 and (trials.status == "completed").all() and trials.trial_id.is_unique
    assert len(generated) == CELLS * 2 * 8 and not generated.duplicated().any()
    assert len(store.read_pandas("checkpoints")) == CELLS * 20
    # Ray recorded the lost trial's failure, and the retry finished on the surviving node.
    errors = list(Path(store.path("_ray")).glob("pdiff-*/*/error.txt"))
    assert errors, "no trial failed: the node was removed without losing work"
    assert keep.node_id in set(trials.node_id)


def _train_worker_node() -> str | None:
    import ray._private.state as state

    return next((a["Address"]["NodeID"] for a in state.actors().values()
                 if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"), None)


def _has_checkpoint(run: Path) -> bool:
    """Ray Train registered a checkpoint of the run (a folder alone may be an upload in flight)."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return snapshot.get("latest_checkpoint_result") is not None


@pytest.mark.cluster
def test_losing_the_train_workers_node_resumes_the_cell(cluster, tmp_path):
    import numpy as np
    import ray
    import torch

    from orchestrator.spec import load_spec
    from orchestrator.store.paths import source_run as run_name
    from pdiff import ParameterSubset, build_model, load_dataset
    from pdiff.collect import collect_snapshots, train_source

    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    raw = copy.deepcopy(TINY)
    raw["sources"]["archs"] = ["cnn_small"]  # one cell
    raw["sources"]["train"]["epochs"] = 100  # 10-30 s of training: the kill lands mid-way
    raw["pdiff"].update(num_samples=1, baselines=False)  # stage 2 as short as it gets
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    [cell] = load_spec(path).cells
    store = Store(str(tmp_path / "out"), "tiny")
    run = Path(store.path("_ray", run_name(cell.cell_id)))
    proc = subprocess.Popen(sweep_command(path, tmp_path / "out", "--address", cluster.address, "--shared-storage"),
                            cwd=ROOT, env=sweep_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ray.init(address=cluster.address)
    try:
        deadline = time.monotonic() + 300
        while not _has_checkpoint(run):  # at least one finished epoch is checkpointed
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the cell never checkpointed an epoch"
            time.sleep(0.2)
        [doomed] = [n for n in nodes if n.node_id == _train_worker_node()]
        cluster.remove_node(doomed, allow_graceful=False)
        out, _ = proc.communicate(timeout=400)
    finally:
        ray.shutdown()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out[-4000:]

    source = store.read_pandas("sources").iloc[0]
    assert 0 < source.resumed_from_epoch < cell.train.epochs, source.resumed_from_epoch
    assert source.node_id != doomed.node_id
    assert f"resumed from epoch {source.resumed_from_epoch}" in out
    assert not run.exists()  # the finished cell's checkpoints are deleted
    # The resumed cell's snapshots are those of an uninterrupted run (one thread, as the worker had).
    torch.set_num_threads(1)
    data = load_dataset(cell.dataset, seed=cell.seed)
    model = build_model(cell.arch, channels=data.channels, classes=data.classes, image_size=data.image_size,
                        seed=cell.seed)
    subset = ParameterSubset.select(model, cell.subset)
    train_source(model, data, cell.train, seed=cell.seed, log=lambda _: None)
    expected = collect_snapshots(model, subset, data, cell.collect, seed=cell.seed, batch_size=cell.train.batch_size,
                                 log=lambda _: None)
    snapshots = store.read_pandas("checkpoints").sort_values("index")
    torch.testing.assert_close(torch.from_numpy(np.stack(snapshots.params)), expected, rtol=0, atol=1e-6)
