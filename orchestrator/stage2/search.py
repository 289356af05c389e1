"""Stage 2 on Ray Tune + Optuna: per cell, search the autoencoder / diffusion knobs (`run_tuning`).

Each cell's search is one Tune experiment driven from a task of its own (`search_cell`), all cells side by
side, for the trials the tables still miss. A trial (trial.py) writes its own rows; the driver writes the
`trials` row of a trial that ends without one (stopped early, or failed for good after Tune's retries). The
study and its searcher are study.py's; the console line of each trial is watch.py's.

ray.tune is imported inside the functions that search: importing it takes seconds that
`python -m orchestrator.sweep --dry-run` (and every reader of this module) should not pay.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import ray

from orchestrator.runtime.cluster import driver_options
from orchestrator.runtime.progress import Progress
from orchestrator.spec import Cell, SweepSpec
from orchestrator.stage1.cells import cell_health, load_snapshots
from orchestrator.stage2.study import numbered_searcher
from orchestrator.stage2.trial import (PROBES, STORAGE, cell_baselines, reason_text, run_trial, trial_identity,
                                       trials_row)
from orchestrator.stage2.watch import TrialWatcher
from orchestrator.store.errors import StorageFault, storage_fault
from orchestrator.store.tables import Store

__all__ = ["run_tuning", "search_cell", "finished_trials", "drop_orphans"]


def finished_trials(store: Store, spec: SweepSpec, cell: Cell) -> list[dict[str, Any]]:
    """The cell's `trials` rows of this search (its `search_hash`): the trials a re-run does not repeat."""
    rows = store.read_pandas("trials", cell.cell_id)
    if rows.empty:
        return []
    return rows[rows.search_hash == spec.search_hash].to_dict("records")


def _next_index(finished: list[dict[str, Any]]) -> int:
    """The index of a cell's next trial: after every trial already in the table."""
    indices = [int(r["trial_index"]) for r in finished if r.get("trial_index") is not None
               and r["trial_index"] == r["trial_index"]]  # NaN in rows of older tables
    return max(indices, default=len(finished) - 1) + 1


def _error_reason(trial) -> str:
    """The last line of the error Tune recorded for a trial (its exception), or a general one."""
    try:
        with open(trial.error_file) as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("Failure #")]
        return reason_text("error after retries: " + lines[-1])
    except (OSError, TypeError, IndexError):
        return "error after retries (see the trial's error file under _ray/)"


def _record_unfinished(spec: SweepSpec, cell: Cell, store: Store, trial, status: str,
                       reason: str | None = None) -> None:
    """A trial stopped early (or failed for good) writes no row itself: record it from the driver."""
    trial_id, index, knobs = trial_identity(spec, cell, trial.config)
    if store.has_writer("trials", cell.cell_id, trial_id):  # its own file, or its rows in a compacted one
        return
    last = trial.last_result or {}
    store.delete("generated", cell.cell_id, trial_id)
    measures = {"val_acc": last.get("val_acc") if status != "failed" else None} | ({"reason": reason} if reason else {})
    store.write("trials", cell.cell_id, trial_id, [trials_row(spec, trial_id, index, knobs, status, measures)])


def _recorder(spec: SweepSpec, cell: Cell, store: Store):
    """The Tune callback that writes the `trials` row of each trial that ends without its own."""
    from ray import tune

    class RecordUnfinished(tune.Callback):
        storage_failed = False  # after a storage fault, a trial stopped is unfinished (no row), not 'stopped'

        def on_trial_result(self, iteration, trials, trial, result, **info):
            self.storage_failed |= result.get("phase") == STORAGE

        def on_trial_complete(self, iteration, trials, trial, **info):
            # 'failed' wrote its own row; a trial whose storage failed (STORAGE) writes none
            if (trial.last_result or {}).get("phase") not in ("done", "failed") and not self.storage_failed:
                _record_unfinished(spec, cell, store, trial, "stopped")

        def on_trial_error(self, iteration, trials, trial, **info):  # raised, retried, raised again
            _record_unfinished(spec, cell, store, trial, "failed", _error_reason(trial))

    return RecordUnfinished()


def _storage_stopper():
    """The Tune stopper by which the first trial whose storage failed (phase STORAGE) stops the whole search:
    the sweep stops."""
    from ray import tune

    class StopOnStorageFault(tune.Stopper):
        failed = False

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.failed |= result.get("phase") == STORAGE
            return self.failed

        def stop_all(self) -> bool:
            return self.failed

    return StopOnStorageFault()


def _trainable(spec: SweepSpec, cell: Cell, store: Store, snapshots, sink):
    """The cell's trials as a Tune trainable with its resources. Tune registers trainables cluster-wide by
    name: concurrent searches of other cells must not share one, or a trial may run with another cell's
    parameters."""
    from ray import tune

    def cell_trial(config: dict, **kwargs) -> None:
        try:
            run_trial(config, **kwargs)
        except OSError as err:  # the storage failed under the trial: not a verdict on it (and no retry)
            tune.report({"phase": STORAGE, "reason": reason_text(err)})

    cell_trial.__name__ = cell_trial.__qualname__ = f"pdiff_{cell.cell_id.replace('-', '_')}"
    res = spec.trial_resources
    return tune.with_resources(
        tune.with_parameters(cell_trial, spec=spec, cell=cell, store=store, snapshots=snapshots, sink=sink),
        {"cpu": res.cpus, "gpu": res.gpus},
    )


@ray.remote(num_cpus=0)
def search_cell(spec: SweepSpec, cell: Cell, store: Store, snapshots, remaining: int,
                finished: list[dict[str, Any]], sink=None) -> str:
    """One cell's Tune + Optuna experiment, driven from a task that holds no CPU, so that
    the searches of all cells run side by side and share the cluster."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # progress comes from the tables, not Tune's console tables
    # A failed trial's one result carries no metric (it has none): Tune's strict check would end the
    # whole search with a ValueError for it. ASHA and the searcher skip such a result.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    first = _next_index(finished)
    param_space, searcher, journal = None, None, None
    if spec.search:
        searcher, journal = numbered_searcher(spec, cell, store, finished, first)
    else:  # every knob fixed: `remaining` repeats of one configuration, each with its own seed
        param_space = {"trial_index": tune.grid_search(list(range(first, first + remaining)))}
    scheduler = None
    if spec.grace_period is not None:
        scheduler = ASHAScheduler(metric="val_acc", mode="max", time_attr="training_iteration",
                                  max_t=PROBES + 2, grace_period=spec.grace_period)
    tuner = tune.Tuner(
        _trainable(spec, cell, store, snapshots, sink),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=remaining if searcher else 1,
                                    max_concurrent_trials=spec.max_concurrent),
        run_config=tune.RunConfig(
            name=f"pdiff-{cell.cell_id}-{uuid.uuid4().hex[:6]}",
            **store.ray_storage(),
            failure_config=tune.FailureConfig(max_failures=2), verbose=0, stop=_storage_stopper(),
            callbacks=[_recorder(spec, cell, store)],
        ),
    )
    try:
        results = tuner.fit()
    finally:
        if journal is not None:
            journal.close()
    faults = [r.metrics.get("reason") for r in results if (r.metrics or {}).get("phase") == STORAGE]
    if faults:  # its trials stay unfinished: the re-run after the fault is cleared runs them
        raise StorageFault(faults[0] or "the storage failed under a trial")
    return cell.cell_id


def drop_orphans(store: Store, cell: Cell) -> None:
    """`generated` and `curves` rows of trials that never wrote their `trials` row (interrupted mid-write).
    By writer, not by file: a compacted file holds many writers' rows (Store.delete takes them out there)."""
    committed = store.writer_ids("trials", cell.cell_id)
    for table in ("generated", "curves"):
        for writer in sorted(store.writer_ids(table, cell.cell_id) - committed):
            store.delete(table, cell.cell_id, writer)


def _searchable_cells(spec: SweepSpec, store: Store, progress: Progress) -> list[Cell]:
    """The spec's cells but those whose collection failed its health check (`sources.status = 'failed'`),
    each of which is said."""
    health = cell_health(store)
    cells = [c for c in spec.cells if health.get(c.cell_id, ("healthy", None))[0] != "failed"]
    for c in spec.cells:
        if c not in cells:
            progress.say(f"{c.cell_id}: no baselines or trials: {health[c.cell_id][1]}")
    return cells


def _launch_baselines(spec: SweepSpec, store: Store, progress: Progress, cells: list[Cell],
                      snapshots: dict[str, ray.ObjectRef]) -> list[ray.ObjectRef]:
    """The baselines tasks of the cells that have no `baselines` rows yet."""
    have = set(store.read("baselines", columns=["cell_id"]).column("cell_id").to_pylist())
    todo = [c for c in cells if c.cell_id not in have]
    progress.stage("baselines", total=len(cells), done=len(cells) - len(todo))
    res = spec.trial_resources
    task = cell_baselines.options(num_cpus=res.cpus, num_gpus=res.gpus)
    return [task.remote(spec, c, store, snapshots[c.cell_id]) for c in todo]


def _launch_searches(spec: SweepSpec, store: Store, progress: Progress, cells: list[Cell],
                     snapshots: dict[str, ray.ObjectRef]) -> list[ray.ObjectRef]:
    """The search tasks of the cells that still miss trials, each for the trials it misses."""
    plan = []
    for cell in cells:
        drop_orphans(store, cell)
        finished = finished_trials(store, spec, cell)
        plan.append((cell, finished, max(0, spec.num_samples - len(finished))))
    total = spec.num_samples * len(cells)
    progress.stage("trials", total=total, done=total - sum(r for _, _, r in plan))
    search = search_cell.options(**driver_options())
    return [search.remote(spec, cell, store, snapshots[cell.cell_id], remaining, finished, progress.sink)
            for cell, finished, remaining in plan if remaining]


def _wait(pending: dict[ray.ObjectRef, str], store: Store, progress: Progress) -> None:
    """Until every task has ended: the trials' lines as their rows land, the workers' progress, and one line
    per cell's baselines. A task's failure is raised (a storage fault as one line, not a trace)."""
    watcher = TrialWatcher(store, progress)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        watcher.poll()
        progress.poll()
        for ref in ready:
            kind = pending.pop(ref)
            try:
                cell_id = ray.get(ref)  # re-raises a failure
            except ray.exceptions.RayTaskError as err:
                fault = storage_fault(err)
                if fault is None:
                    raise
                raise fault from None
            if kind == "baselines":
                progress.advance("baselines", cell_id)
    watcher.poll()


def run_tuning(spec: SweepSpec, store: Store, progress: Progress) -> None:
    """Baselines and one Tune + Optuna search per cell, all cells side by side, for the missing trials.
    A cell whose collection failed its health check (`sources.status = 'failed'`) gets neither."""
    cells = _searchable_cells(spec, store, progress)
    snapshots = {cell.cell_id: ray.put(load_snapshots(store, cell.cell_id)) for cell in cells}
    pending: dict[ray.ObjectRef, str] = {}
    if spec.baselines:
        pending |= dict.fromkeys(_launch_baselines(spec, store, progress, cells, snapshots), "baselines")
    pending |= dict.fromkeys(_launch_searches(spec, store, progress, cells, snapshots), "search")
    _wait(pending, store, progress)
