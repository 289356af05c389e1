"""Stage 1 on Ray Train: one TorchTrainer run per cell trains the source model and collects snapshots.

Each cell's run is launched from a small Ray task (no CPU of its own), so the
cells run concurrently as far as the cluster's resources allow. Rank 0 writes
the cell's `checkpoints` rows, its model weights, and last its `sources` row:
the sources row is the commit marker of a finished cell.

Every epoch of the source training and of the collection reports its training
state to Ray Train as a checkpoint (`<sweep>/_ray/source-<cell_id>/`): a worker
group restarted after a lost (spot) node, a retried driver, or a re-run sweep
continues the cell from its last epoch, with the snapshots of an uninterrupted
run. The run folder is deleted once the cell's rows are written.

`ray.train` is imported inside the functions that run it: importing it takes many seconds, which
`python -m orchestrator.sweep --dry-run` (and every reader of this module) should not pay.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time
from typing import Callable

import ray
import torch

from orchestrator.runtime.cluster import driver_options
from orchestrator.runtime.progress import Progress, worker_log
from orchestrator.spec import Cell, SweepSpec
from orchestrator.stage1.cells import drop_run, pending_cells, save_object
from orchestrator.store import paths
from orchestrator.store.tables import Store
from pdiff import ParameterSubset, build_model, load_dataset
from pdiff.collect import collect_snapshots, train_source
from pdiff.compare import leave_one_out
from pdiff.data import Dataset
from pdiff.evaluate import BatchedEvaluator, family_stats, pack_wrong, spread
from pdiff.health import Health, collection_health


def _state_file(rank: int, world: int) -> str:
    # Each rank keeps its own state (its augmentation RNG differs); a checkpoint of another
    # world size has no file for this one, and every rank then starts afresh.
    return f"state-{rank}-of-{world}.pt"


# Train's controller takes one report per poll (every 2 s): reporting more often only blocks
# the loop, so epochs shorter than this are checkpointed together.
CHECKPOINT_EVERY_S = 2.0


def _checkpointer(rank: int, world: int) -> Callable[[dict], None]:
    """save(progress) after every epoch: reports the training state to Ray Train, which copies it
    into the sweep's storage, at most every CHECKPOINT_EVERY_S (rank 0's clock decides for all)."""
    import ray.train
    import ray.train.collective

    last = -math.inf

    def save(progress: dict) -> None:
        nonlocal last
        due = time.monotonic() - last >= CHECKPOINT_EVERY_S
        if world > 1:
            due = ray.train.collective.broadcast_from_rank_zero(due)  # every rank reports, or none
        if not due:
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(progress, os.path.join(folder, _state_file(rank, world)))
            ray.train.report({"epochs": progress["epochs"]}, checkpoint=ray.train.Checkpoint.from_directory(folder))
        last = time.monotonic()

    return save


def _load_checkpoint(rank: int, world: int) -> dict | None:
    """The progress this rank reported last, when Ray Train restarts the cell; else None."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, _state_file(rank, world))
        return torch.load(path, map_location="cpu") if os.path.exists(path) else None  # RNG states stay on the CPU


def _health_advice(cell: Cell, health: Health) -> str | None:
    """The health check's reason, with the spec key to change."""
    if health.status == "failed":
        other = ("; for a subset that feeds a BatchNorm, sources.collect.batchnorm: train keeps it scale-invariant"
                 if cell.collect.batchnorm == "eval" else "")
        return f"{health.reason}; lower sources.collect.lr (now {cell.collect.lr:g}){other}"
    if health.status == "uniform":
        return (f"{health.reason}; raise sources.collect.lr (now {cell.collect.lr:g}) or sources.collect.interval "
                f"(now {cell.collect.interval})")
    return None


def _write_cell(store: Store, cell: Cell, model: torch.nn.Module, subset: ParameterSubset, data: Dataset,
                snapshots: torch.Tensor, start: torch.Tensor, losses: list[float], test_acc: float, log,
                *, seconds: float, resumed_from: int, max_acc_drop: float) -> None:
    """Score the snapshots, judge the collection, and write the cell's rows (the `sources` row last)."""
    evaluator = BatchedEvaluator(model, subset)
    scores = evaluator.score(snapshots, data)
    source = evaluator.score(start[None].to(snapshots.dtype), data)
    family = family_stats(snapshots, scores.test_wrong, snapshots)  # the reference for collapse
    health = collection_health(float(source.val_acc[0]), scores.val_acc.tolist(), losses, family["pairwise_iou"],
                               family["distinct_sets"], max_acc_drop=max_acc_drop)
    store.write("checkpoints", cell.cell_id, "snapshots", [
        {"index": i, "val_acc": float(scores.val_acc[i]), "test_acc": float(scores.test_acc[i]),
         "val_wrong": pack_wrong(scores.val_wrong[i]), "test_wrong": pack_wrong(scores.test_wrong[i]),
         "params": snapshots[i].tolist()} for i in range(len(snapshots))
    ])
    with torch.no_grad():
        subset.load(model, start)  # the stored model is the source itself, whose accuracy `sources` reports
    save_object(store, paths.source_model(cell.cell_id), {k: v.cpu() for k, v in model.state_dict().items()})
    save_object(store, paths.snapshot_scores(cell.cell_id),
                {k: v.cpu() for k, v in dataclasses.asdict(scores).items()})
    store.write("sources", cell.cell_id, "source", [{
        "arch": cell.arch, "dataset": cell.dataset, "seed": cell.seed, "subset": list(subset.names),
        "n_subset": subset.numel, "n_total": sum(p.numel() for p in model.parameters()),
        "k": len(snapshots), "test_acc": test_acc, "seconds": seconds,
        "node_id": ray.get_runtime_context().get_node_id(), "model_path": paths.source_model(cell.cell_id),
        "resumed_from_epoch": resumed_from, "n_val": len(data.val), "n_test": len(data.test),
        "status": health.status, "reason": _health_advice(cell, health),
        "source_val_acc": float(source.val_acc[0]), "snapshot_val_acc": float(scores.val_acc.mean()),
        "snapshot_test_acc": float(scores.test_acc.mean()),
    } | {f"snapshot_{k}": v for k, v in family.items() if k in ("pairwise_iou", "distinct_sets")}
      | {"snapshot_spread": spread(snapshots)} | leave_one_out(snapshots, scores.test_wrong, scores.val_wrong)])
    log(f"source test acc {100 * test_acc:.2f}%, {len(snapshots)} snapshots, "
        f"mean snapshot test acc {100 * float(scores.test_acc.mean()):.2f}%"
        + (f"; {health.status.upper()}: {_health_advice(cell, health)}" if health.status != "healthy" else ""))


def _train_cell(config: dict) -> None:
    """Ray Train worker loop: train, collect, and (rank 0) write the cell's tables.

    Progress is {"stage": "train" | "collect", "epochs": source epochs + collection passes
    done, "state": the pdiff loop's state, "test_acc": the source's, once trained}."""
    import ray.train
    import ray.train.torch

    cell: Cell = config["cell"]
    store: Store = config["store"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    log = worker_log(config.get("progress"), cell.cell_id, cell.cell_id) if rank == 0 else (lambda msg: None)

    t0 = time.perf_counter()
    save = _checkpointer(rank, world)
    resumed = _load_checkpoint(rank, world)
    resumed_from = resumed["epochs"] if resumed else 0
    if resumed:
        log(f"resumed from epoch {resumed_from}")
    data = load_dataset(cell.dataset, seed=cell.seed)
    model = build_model(cell.arch, channels=data.channels, classes=data.classes, image_size=data.image_size,
                        seed=cell.seed).to(device)
    subset = ParameterSubset.select(model, cell.subset)
    # DDP only when the spec asks for several workers; the wrapper is rebuilt
    # after freezing so that it tracks only the subset during collection.
    wrap = (lambda m: ray.train.torch.prepare_model(m, move_to_device=False)) if world > 1 else None
    if resumed and resumed["stage"] == "collect":
        test_acc = resumed["test_acc"]
    else:
        test_acc = train_source(
            model, data, cell.train, seed=cell.seed, log=log, log_every=max(1, cell.train.epochs // 3), wrap=wrap,
            rank=rank, world_size=world, resume=resumed and resumed["state"],
            save_state=lambda state: save({"stage": "train", "epochs": state["epoch"], "state": state}))
    # The source's own subset, the collection's start: the stored model and the health check's reference.
    # (A checkpoint written before it was kept has none: the first snapshot stands in.)
    start = resumed.get("source_subset") if resumed and resumed["stage"] == "collect" else subset.flatten(model)
    losses: list[float] = []
    snapshots = collect_snapshots(
        model, subset, data, cell.collect, seed=cell.seed, batch_size=cell.train.batch_size, log=log, wrap=wrap,
        rank=rank, world_size=world, resume=resumed["state"] if resumed and resumed["stage"] == "collect" else None,
        losses=losses,
        save_state=lambda state: save({"stage": "collect", "epochs": cell.train.epochs + state["epoch"],
                                       "state": state, "test_acc": test_acc, "source_subset": start}))
    if rank == 0:
        start = snapshots[0] if start is None else start
        _write_cell(store, cell, model, subset, data, snapshots, start, losses, test_acc, log,
                    seconds=time.perf_counter() - t0, resumed_from=resumed_from, max_acc_drop=config["max_acc_drop"])
    ray.train.report({"test_acc": test_acc})


@ray.remote(num_cpus=0, max_retries=2)
def _cell_run(cell: Cell, store: Store, spec: SweepSpec, sink=None) -> str:
    """Drive one cell's TorchTrainer from inside the cluster (it holds no CPU itself)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    res = spec.source_resources
    per_worker = {"CPU": res.cpus} | ({"GPU": res.gpus} if res.gpus else {})
    trainer = TorchTrainer(
        _train_cell,
        train_loop_config={"cell": cell, "store": store, "threads": max(1, int(res.cpus)), "progress": sink,
                           "max_acc_drop": spec.max_acc_drop},
        scaling_config=ScalingConfig(num_workers=res.workers, use_gpu=res.gpus > 0, resources_per_worker=per_worker),
        # The cell's own run name: a retried driver or a re-run sweep resumes the cell's
        # last checkpoint. Safe because a cell id is its training content, and drop_run
        # deletes the run once the rows exist (a later retraining starts afresh).
        run_config=RunConfig(name=paths.source_run(cell.cell_id), **store.ray_storage(),
                             checkpoint_config=CheckpointConfig(num_to_keep=1),
                             failure_config=FailureConfig(max_failures=spec.source_max_failures)),
    )
    trainer.fit()
    drop_run(store, cell.cell_id)
    return cell.cell_id


def run_sources(spec: SweepSpec, store: Store, progress: Progress) -> None:
    """Train and collect every cell that has no `sources` row yet, concurrently."""
    todo = pending_cells(spec, store)
    progress.stage("sources", total=len(spec.cells), done=len(spec.cells) - len(todo))
    for cell in set(spec.cells) - set(todo):  # checkpoints left by a driver lost after its cell's rows
        drop_run(store, cell.cell_id)
    driver = _cell_run.options(**driver_options())
    running = {driver.remote(cell, store, spec, progress.sink): cell for cell in todo}
    for cell in todo:
        progress.update(cell.cell_id, cell.cell_id, "waiting for its Ray Train worker group")
    while running:
        ready, _ = ray.wait(list(running), num_returns=1, timeout=2.0)
        progress.poll()  # the workers' lines, and the heartbeat
        if not ready:
            continue
        cell = running.pop(ready[0])
        progress.finish(cell.cell_id)
        ray.get(ready[0])  # re-raises a cell's failure after Ray's retries
        row = store.read_pandas("sources", cell.cell_id).iloc[0]
        resumed = f", resumed from epoch {row.resumed_from_epoch}" if row.resumed_from_epoch else ""
        health = f"; {row.status.upper()}: {row.reason}" if row.status != "healthy" else ""
        progress.advance("sources", f"{cell.cell_id}: source {100 * row.test_acc:.2f}% test acc, "
                                    f"{row.k} snapshots of {row.n_subset} params ({row.seconds:.0f}s{resumed}), "
                                    f"their mean val acc {100 * row.snapshot_val_acc:.2f}% "
                                    f"(source {100 * row.source_val_acc:.2f}%){health}")
