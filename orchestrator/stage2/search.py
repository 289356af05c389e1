"""Stage 2 on Ray Tune + Optuna: per cell, search the autoencoder / diffusion knobs.

A trial trains the AE and the latent DDPM on the cell's snapshots, generates N
vectors, scores them on val and test, and writes its `generated` rows and last
its `trials` row (the commit marker). The objective is the val accuracy of the
val-selected generated model (the test split is never used to search), with
the spec's `novelty` as an optional second one: minimise `val_max_iou`, the mean
over the generated models of the max IoU of each one's validation mistakes to any
snapshot's (computed by pdiff; lower = more novel).

Resume: the Optuna study is rebuilt from the `trials` table (Optuna's own
`create_trial` / `add_trial`), so a re-run only launches the missing trials and
the sampler continues from everything already measured.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import uuid
from typing import Any

import ray
import torch

from orchestrator.runtime.cluster import driver_options
from orchestrator.runtime.progress import Progress, step_reporter
from orchestrator.spec import Cell, SweepSpec
from orchestrator.stage1.cells import cell_health, load_snapshot_scores, load_source_model
from orchestrator.stage2.curves import LossRecorder, write_curves
from orchestrator.stage2.generators import save_trial_model
from orchestrator.stage2.journal import Journal
from orchestrator.store import paths
from orchestrator.store.tables import StorageFault, Store, storage_fault
from pdiff import ParameterSubset, load_dataset
from pdiff.compare import judge
from pdiff.evaluate import BatchedEvaluator, max_iou, pack_wrong
from pdiff.pipeline import Diverged, reference_families, run_baselines, run_pdiff
from pdiff.verdicts import family_verdict

__all__ = ["run_tuning", "trial_id_of", "PROBES"]

PROBES = 3  # intermediate reports per training phase, when early stopping is on
STORAGE = "storage"  # a trial's last phase when the storage failed under it: no row, the trial stays unfinished
# The spec's objective name -> (the Tune metric, which is also the `trials` column, its mode).
METRICS = {"accuracy": ("val_acc", "max"), "mean_accuracy": ("val_mean_acc", "max"),
           "novelty": ("val_max_iou", "min")}


def trial_id_of(cell_id: str, knobs: dict[str, Any], index: int) -> str:
    """A trial is identified by its content: the cell, the knob values and its index in the
    cell's search, so two trials that draw the same values (repeats of a fixed configuration,
    a re-suggested point) are two trials with their own seeds and files."""
    content = json.dumps([cell_id, sorted(knobs.items()), index], default=str)
    return "t" + hashlib.sha256(content.encode()).hexdigest()[:10]


def _identity(spec: SweepSpec, cell: Cell, config: dict) -> tuple[str, int, dict[str, Any]]:
    """(trial id, trial index, every knob) of a Tune config (searched knobs + `trial_index`)."""
    config = dict(config)
    index = int(config.pop("trial_index"))
    knobs = spec.fixed | config
    return trial_id_of(cell.cell_id, knobs, index), index, knobs


def _snapshots(store: Store, cell: Cell) -> torch.Tensor:
    table = store.read("checkpoints", cell.cell_id, columns=["index", "params"]).sort_by("index")
    return torch.tensor(table.column("params").to_pylist(), dtype=torch.float32)


def _device() -> str:
    return "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"


def _setup(store: Store, cell: Cell, threads: int):
    torch.set_num_threads(threads)
    device = _device()
    data = load_dataset(cell.dataset, seed=cell.seed)
    model = load_source_model(store, cell.arch, paths.source_model(cell.cell_id), data, device)
    evaluator = BatchedEvaluator(model, ParameterSubset.select(model, cell.subset))
    return data, evaluator, load_snapshot_scores(store, cell.cell_id), device


def _vector_rows(assessment) -> list[dict[str, Any]]:
    """The rows of a `generated` or `baselines` family: one per model, its wrong-prediction sets packed."""
    a, s = assessment, assessment.scores
    return [{"index": i, "val_acc": float(s.val_acc[i]), "test_acc": float(s.test_acc[i]),
             "test_max_iou": float(a.test_max_iou[i]), "val_max_iou": float(a.val_max_iou[i]),
             "nearest_l2": float(a.nearest_l2[i]),
             "val_wrong": pack_wrong(s.val_wrong[i]), "test_wrong": pack_wrong(s.test_wrong[i]),
             "params": a.vectors[i].tolist()} for i in range(len(a.vectors))]


def _divergence(run) -> str | None:
    """Why a finished p-diff run is unusable (non-finite losses or vectors), or None. A second line of
    defence behind `run_pdiff`'s own `Diverged`."""
    for name in ("ae_loss", "ldm_loss"):
        value = getattr(run, name)
        if value is None or not math.isfinite(value):
            return f"{name} is {value}"
    vectors = run.generated.vectors
    bad = int((~torch.isfinite(vectors).all(1)).sum()) if vectors.numel() else 0
    return f"{bad} of {len(vectors)} generated vectors are non-finite" if bad else None


def _hyper(cfg) -> dict[str, Any]:
    """Every knob as a column, defaults included, so trials of different specs compare."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.knobs().items()}


def _trial(config: dict, *, spec: SweepSpec, cell: Cell, store: Store, snapshots: torch.Tensor, sink=None) -> None:
    """Ray Tune function trainable: one p-diff configuration on one cell; its steps go to `sink`
    (the driver's `Progress.sink`)."""
    from ray import tune

    t0 = time.perf_counter()
    trial_id, index, knobs = _identity(spec, cell, config)
    cfg = spec.pdiff_config(knobs)
    data, evaluator, snap_scores, device = _setup(store, cell, max(1, int(spec.trial_resources.cpus)))
    early = spec.grace_period is not None
    # Keeps every loss it sees (the curve of a run that raises) and passes it on to the progress lines.
    recorder = LossRecorder(step_reporter(sink, trial_id, f"{cell.cell_id} trial {trial_id}",
                                          {"ae": cfg.ae.steps, "ldm": cfg.ldm.steps}))
    try:
        seed = spec.seed + int(trial_id[1:], 16) % 2**31
        run = run_pdiff(snapshots, evaluator, data, snap_scores, cfg, seed=seed,
                        device=device, probes=PROBES if early else 0,
                        on_step=recorder,
                        on_probe=lambda phase, step, acc: tune.report({"val_acc": 100 * acc, "phase": phase}))
        divergence = _divergence(run)
        if divergence:
            raise Diverged(divergence)
    except Exception as err:  # Diverged, or any error of the method itself: a failed trial, not a number
        # Stored and reported once, not raised: Tune would retry an error (FailureConfig), and a
        # deterministic failure fails again. (Tune's stop request is SystemExit and passes through.)
        reason = err.reason if isinstance(err, Diverged) else f"{type(err).__name__}: {err}"
        reason = " ".join(reason.split())[:500]
        store.delete("generated", cell.cell_id, trial_id)
        write_curves(store, cell.cell_id, trial_id, recorder)  # the losses up to the failure, before the row
        store.write("trials", cell.cell_id, trial_id, [_hyper(cfg) | {
            "trial_id": trial_id, "trial_index": index, "search_hash": spec.search_hash, "status": "failed",
            "reason": reason, "seconds": time.perf_counter() - t0, "node_id": ray.get_runtime_context().get_node_id(),
        }])
        tune.report({"phase": "failed", "reason": reason})  # no metric: Optuna gets FAIL (see the searcher)
        return
    g = run.generated
    result = {"val_acc": 100 * float(g.scores.val_acc.max()), "val_max_iou": g.summary["val_max_iou"],
              "val_mean_acc": 100 * float(g.scores.val_acc.mean())}
    judged = _judge(spec, cell, run, snapshots, evaluator, data, snap_scores, seed)
    store.write("generated", cell.cell_id, trial_id, [{"trial_id": trial_id} | r for r in _vector_rows(g)])
    save_trial_model(store, cell.cell_id, trial_id, run, cfg, seed)  # before the row: the row is the commit marker
    write_curves(store, cell.cell_id, trial_id, recorder, run)  # every step's loss, decimated
    store.write("trials", cell.cell_id, trial_id, [_hyper(cfg) | g.summary | result | judged | {
        "trial_id": trial_id, "trial_index": index, "search_hash": spec.search_hash, "status": "completed",
        "ae_loss": run.ae_loss, "ldm_loss": run.ldm_loss, "ae_steps_taken": run.ae_steps, "ae_r2": run.ae_r2,
        "ae_fidelity": run.ae_fidelity, "ae_converged": run.ae_converged, "seconds": time.perf_counter() - t0,
        "node_id": ray.get_runtime_context().get_node_id(),
    }])
    tune.report(result | {"phase": "done", "test_selected_acc": g.summary["selected_acc"]})


def _judge(spec: SweepSpec, cell: Cell, run, snapshots: torch.Tensor, evaluator, data, snap_scores,
           seed: int) -> dict[str, Any]:
    """The trial's verdict (collapsed / memorising / novel) and its 95% comparisons with the baselines (the
    same vectors as the cell's baselines table) and with its own autoencoder's latent Gaussian."""
    loo = _snapshot_loo(snap_scores)
    refs = reference_families(run, snapshots, evaluator, data, snap_scores, spec.pdiff_config({}).n_generated,
                              seed=seed, baseline_seed=_baseline_seed(spec, cell) if spec.baselines else None,
                              noise_sigma=spec.noise_sigma)
    return judge(run.generated, refs, snap_scores.test_wrong, loo, seed=seed)


def _snapshot_loo(snap_scores) -> float:
    """The verdicts' reference, `sources.snapshot_loo_max_iou`, from the snapshots' stored mistakes alone (the
    L2 part of `leave_one_out` is a K x K distance over the whole subset that a verdict does not need)."""
    return float(max_iou(snap_scores.test_wrong).mean())


def _baseline_seed(spec: SweepSpec, cell: Cell) -> int:
    return spec.seed + cell.seed


def _family_columns(assessment, snapshot_loo_max_iou: float) -> dict[str, Any]:
    """A family's collapse signals, repeated on each of its rows (the family has no table of its own)."""
    s = assessment.summary
    return {f"family_{k}": s[k] for k in ("pairwise_iou", "distinct_sets", "spread_ratio", "collapsed")} | {
        "family_verdict": family_verdict(s["collapsed"], s["test_max_iou"], snapshot_loo_max_iou)}


@ray.remote(max_retries=2)
def _baselines(spec: SweepSpec, cell: Cell, store: Store, snapshots: torch.Tensor) -> str:
    data, evaluator, snap_scores, _ = _setup(store, cell, max(1, int(spec.trial_resources.cpus)))
    n = spec.pdiff_config({}).n_generated
    results = run_baselines(snapshots, evaluator, data, snap_scores, n, seed=_baseline_seed(spec, cell),
                            noise_sigma=spec.noise_sigma)
    loo = _snapshot_loo(snap_scores)
    # One file for all methods: the cell's baselines appear together or not at all.
    store.write("baselines", cell.cell_id, "baselines",
                [{"method": name} | row | _family_columns(a, loo)
                 for name, a in results.items() for row in _vector_rows(a)])
    return cell.cell_id


def _finished_trials(store: Store, spec: SweepSpec, cell: Cell) -> list[dict[str, Any]]:
    rows = store.read_pandas("trials", cell.cell_id)
    if rows.empty:
        return []
    return rows[rows.search_hash == spec.search_hash].to_dict("records")


def _study(spec: SweepSpec, cell: Cell, finished: list[dict[str, Any]]):
    """An Optuna study holding every trial of this cell already in the tables."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    directions = ["maximize" if METRICS[o][1] == "max" else "minimize" for o in spec.objective]
    # Seeded by how much is already done: a resumed search must not replay the
    # random start-up suggestions it has already measured.
    seed = spec.seed + len(finished)
    if spec.search_alg == "grid":  # skips grid points the study already holds
        sampler = optuna.samplers.GridSampler({k: list(d.values) for k, d in spec.search.items()}, seed=seed)
    elif spec.search_alg == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    elif len(directions) > 1:
        sampler = optuna.samplers.NSGAIISampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    name = f"{spec.name}-{cell.cell_id}"
    study = optuna.create_study(storage=storage, study_name=name, directions=directions, sampler=sampler)
    dists = {k: d.to_optuna() for k, d in spec.search.items()}
    for row in finished:
        params = {k: row[k] for k in dists}
        attrs = {k: row.get(k) for k in ("trial_id", "status")}  # the tables' names, for optuna-dashboard
        if row["status"] == "completed":
            values = [row[METRICS[o][0]] for o in spec.objective]
            study.add_trial(create_trial(params=params, distributions=dists, values=values, user_attrs=attrs))
        elif row["status"] == "failed":  # diverged or raised: no objective value, as Optuna records a failure
            study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.FAIL, user_attrs=attrs))
        else:
            study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.PRUNED,
                                         user_attrs=attrs))
    return storage, name, sampler, dists


def _error_reason(trial) -> str:
    """The last line of the error Tune recorded for a trial (its exception), or a general one."""
    try:
        with open(trial.error_file) as f:
            lines = [line.strip() for line in f if line.strip() and not line.startswith("Failure #")]
        return " ".join(("error after retries: " + lines[-1]).split())[:500]
    except (OSError, TypeError, IndexError):
        return "error after retries (see the trial's error file under _ray/)"


def _record_unfinished(spec: SweepSpec, cell: Cell, store: Store, trial, status: str,
                       reason: str | None = None) -> None:
    """A trial stopped early (or failed for good) writes no row itself: record it from the driver."""
    trial_id, index, knobs = _identity(spec, cell, trial.config)
    if store.has_writer("trials", cell.cell_id, trial_id):  # its own file, or its rows in a compacted one
        return
    last = trial.last_result or {}
    store.delete("generated", cell.cell_id, trial_id)
    store.write("trials", cell.cell_id, trial_id, [knobs | {
        "trial_id": trial_id, "trial_index": index, "search_hash": spec.search_hash, "status": status,
        "val_acc": last.get("val_acc") if status != "failed" else None, "node_id": None,
    } | ({"reason": reason} if reason else {})])


def _recorder(spec: SweepSpec, cell: Cell, store: Store):
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


def _next_index(finished: list[dict[str, Any]]) -> int:
    """The index of a cell's next trial: after every trial already in the table."""
    indices = [int(r["trial_index"]) for r in finished if r.get("trial_index") is not None
               and r["trial_index"] == r["trial_index"]]  # NaN in rows of older tables
    return max(indices, default=len(finished) - 1) + 1


@ray.remote(num_cpus=0)
def _search_cell(spec: SweepSpec, cell: Cell, store: Store, snapshots: torch.Tensor, remaining: int,
                 finished: list[dict[str, Any]], sink=None) -> str:
    """One cell's Tune + Optuna experiment, driven from a task that holds no CPU, so that
    the searches of all cells run side by side and share the cluster."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # progress comes from the tables, not Tune's console tables
    # A failed trial's one result carries no metric (it has none): Tune's strict check would end the
    # whole search with a ValueError for it. ASHA and the searcher above skip such a result.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    first = _next_index(finished)

    class StopOnStorageFault(tune.Stopper):
        """The first trial whose storage failed (phase STORAGE) stops the whole search: the sweep stops."""

        failed = False

        def __call__(self, trial_id: str, result: dict) -> bool:
            self.failed |= result.get("phase") == STORAGE
            return self.failed

        def stop_all(self) -> bool:
            return self.failed

    param_space, searcher, journal = None, None, None
    if spec.search:
        storage, name, sampler, dists = _study(spec, cell, finished)
        # The study as a journal, <sweep>/optuna/<cell_id>.log, that the search then writes (optuna-dashboard)
        journal = Journal(store, cell.cell_id)
        storage = journal.adopt(storage, name)
        metrics = [METRICS[o][0] for o in spec.objective]
        modes = [METRICS[o][1] for o in spec.objective]
        single = len(metrics) == 1

        class NumberedOptunaSearch(OptunaSearch):
            """Optuna's suggestions, each numbered: the index makes equal suggestions distinct trials
            (a retried trial keeps its config, so it keeps its index and its files)."""

            next_index = first

            def suggest(self, trial_id: str):
                config = super().suggest(trial_id)
                if isinstance(config, dict):
                    config, self.next_index = config | {"trial_index": self.next_index}, self.next_index + 1
                    self._ot_trials[trial_id].set_user_attr("trial_id", _identity(spec, cell, config)[0])
                return config

            # A failed trial reports {"phase": "failed"} and no metric. OptunaSearch would read the
            # missing metric as a KeyError (single objective) or tell Optuna a [None, None] value
            # (two); Optuna's own state for it is FAIL, with no value.
            def on_trial_result(self, trial_id: str, result: dict):
                if result.get("phase") not in ("failed", STORAGE):
                    super().on_trial_result(trial_id, result)

            # A trial stopped early (its last result a probe's, not "done") is PRUNED, as the study rebuilt
            # from the tables has it, not COMPLETE with a probe's value (or left RUNNING: two objectives).
            def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
                if result and result.get("phase") in ("failed", STORAGE):
                    result, error = None, True
                elif result and result.get("phase") != "done":
                    result = None
                super().on_trial_complete(trial_id, result=result, error=error)
                journal.publish()

        searcher = NumberedOptunaSearch(space=dists, metric=metrics[0] if single else metrics,
                                        mode=modes[0] if single else modes, storage=storage, study_name=name,
                                        sampler=sampler)
    else:  # every knob fixed: `remaining` repeats of one configuration, each with its own seed
        param_space = {"trial_index": tune.grid_search(list(range(first, first + remaining)))}
    scheduler = None
    if spec.grace_period is not None:
        scheduler = ASHAScheduler(metric="val_acc", mode="max", time_attr="training_iteration",
                                  max_t=PROBES + 2, grace_period=spec.grace_period)
    res = spec.trial_resources
    # Tune registers trainables cluster-wide by name: concurrent searches of other
    # cells must not share one, or a trial may run with another cell's parameters.
    def cell_trial(config: dict, **kwargs) -> None:
        try:
            _trial(config, **kwargs)
        except OSError as err:  # the storage failed under the trial: not a verdict on it (and no retry)
            tune.report({"phase": STORAGE, "reason": " ".join(str(err).split())[:500]})

    cell_trial.__name__ = cell_trial.__qualname__ = f"pdiff_{cell.cell_id.replace('-', '_')}"
    trainable = tune.with_resources(
        tune.with_parameters(cell_trial, spec=spec, cell=cell, store=store, snapshots=snapshots, sink=sink),
        {"cpu": res.cpus, "gpu": res.gpus},
    )
    tuner = tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                                    num_samples=remaining if searcher else 1,
                                    max_concurrent_trials=spec.max_concurrent),
        run_config=tune.RunConfig(
            name=f"pdiff-{cell.cell_id}-{uuid.uuid4().hex[:6]}",
            **store.ray_storage(),
            failure_config=tune.FailureConfig(max_failures=2), verbose=0, stop=StopOnStorageFault(),
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


def _drop_orphans(store: Store, cell: Cell) -> None:
    """`generated` and `curves` rows of trials that never wrote their `trials` row (interrupted mid-write).
    By writer, not by file: a compacted file holds many writers' rows (Store.delete takes them out there)."""
    committed = store.writer_ids("trials", cell.cell_id)
    for table in ("generated", "curves"):
        for writer in sorted(store.writer_ids(table, cell.cell_id) - committed):
            store.delete(table, cell.cell_id, writer)


def _interval(row: dict, prefix: str, fmt: str) -> str:
    """`+0.12 [-0.30, +0.51]`: a stored difference and its 95% interval."""
    return (f"{format(row[prefix + '_diff'], fmt)} [{format(row[prefix + '_lo'], fmt)}, "
            f"{format(row[prefix + '_hi'], fmt)}]")


class _TrialWatcher:
    """Prints each trial as its row lands in the `trials` table (trials run in other processes)."""

    def __init__(self, store: Store, progress: Progress):
        self.store, self.progress = store, progress
        self.seen = {f for f in store.files("trials")}
        self.best: dict[str, float] = {}

    def poll(self) -> None:
        import pyarrow.parquet as pq

        for f in self.store.files("trials"):
            if f in self.seen:
                continue
            self.seen.add(f)
            rows = pq.read_table(f, filesystem=self.store.fs).to_pylist()
            if len(rows) != 1:  # a tombstone (a removed trial) or a compacted file: not one trial's row
                continue
            row = rows[0]
            cell = row["cell_id"]
            self.progress.finish(row["trial_id"])
            if row["status"] == "failed":
                self.progress.advance("trials", f"{cell}: trial {row['trial_id']} failed: {row.get('reason')}")
                continue
            if row["status"] != "completed":
                self.progress.advance("trials", f"{cell}: trial {row['trial_id']} {row['status']}")
                continue
            self.best[cell] = max(self.best.get(cell, float("-inf")), row["val_acc"])
            warnings = []
            if row.get("collapsed"):
                warnings.append(f"COLLAPSED: its {row.get('distinct_sets')} distinct model(s) have pairwise IoU "
                                f"{row.get('pairwise_iou', float('nan')):.3f}, spread "
                                f"{row.get('spread_ratio', float('nan')):.2f}x the snapshots'")
            if row.get("ae_converged") is False:
                warnings.append(f"autoencoder stopped at its bound ({row.get('ae_steps_taken')} steps) short of its "
                                f"quality: R2 {row.get('ae_r2', float('nan')):.3f} (ae_min_r2 {row.get('ae_min_r2')}), "
                                f"fidelity {row.get('ae_fidelity', float('nan')):.3f} "
                                f"(ae_min_fidelity {row.get('ae_min_fidelity')})")
            if row.get("verdict") == "memorising":
                warnings.append(f"MEMORISING: its models' mean max-IoU to the snapshots {row['test_max_iou']:.3f} >= "
                                f"the snapshots' own {row.get('snapshot_loo_max_iou', float('nan')):.3f}")
            if row.get("vs_noise"):
                warnings.append(f"vs noise: {row['vs_noise']} (acc {_interval(row, 'vs_noise_acc', '+.2f')} pp, "
                                f"max-IoU {_interval(row, 'vs_noise_iou', '+.3f')})")
            self.progress.advance("trials", f"{cell}: val {row['val_acc']:.2f}%, test (val-selected) "
                                            f"{row['selected_acc']:.2f}%, test max IoU to snapshots {row['test_max_iou']:.3f}, "
                                            f"pairwise IoU {row.get('pairwise_iou', float('nan')):.3f} "
                                            f"(best val so far {self.best[cell]:.2f}%)"
                                  + "".join(f"; {w}" for w in warnings))


def run_tuning(spec: SweepSpec, store: Store, progress: Progress) -> None:
    """Baselines and one Tune + Optuna search per cell, all cells side by side, for the missing trials.
    A cell whose collection failed its health check (`sources.status = 'failed'`) gets neither."""
    health = cell_health(store)
    cells = [c for c in spec.cells if health.get(c.cell_id, ("healthy", None))[0] != "failed"]
    for c in spec.cells:
        if c not in cells:
            progress.say(f"{c.cell_id}: no baselines or trials: {health[c.cell_id][1]}")
    snapshots = {cell.cell_id: ray.put(_snapshots(store, cell)) for cell in cells}
    pending: dict[ray.ObjectRef, str] = {}
    if spec.baselines:
        have = set(store.read("baselines", columns=["cell_id"]).column("cell_id").to_pylist())
        todo = [c for c in cells if c.cell_id not in have]
        progress.stage("baselines", total=len(cells), done=len(cells) - len(todo))
        res = spec.trial_resources
        for c in todo:
            ref = _baselines.options(num_cpus=res.cpus, num_gpus=res.gpus).remote(spec, c, store, snapshots[c.cell_id])
            pending[ref] = "baselines"

    plan = []
    for cell in cells:
        _drop_orphans(store, cell)
        finished = _finished_trials(store, spec, cell)
        plan.append((cell, finished, max(0, spec.num_samples - len(finished))))
    total = spec.num_samples * len(cells)
    progress.stage("trials", total=total, done=total - sum(r for _, _, r in plan))
    search = _search_cell.options(**driver_options())
    for cell, finished, remaining in plan:
        if remaining:
            pending[search.remote(spec, cell, store, snapshots[cell.cell_id], remaining, finished,
                                  progress.sink)] = "search"

    watcher = _TrialWatcher(store, progress)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=2.0)
        watcher.poll()
        progress.poll()
        for ref in ready:
            kind = pending.pop(ref)
            try:
                cell_id = ray.get(ref)  # re-raises a failure
            except ray.exceptions.RayTaskError as err:  # a storage fault stops the sweep in one line, not a trace
                fault = storage_fault(err)
                if fault is None:
                    raise
                raise fault from None
            if kind == "baselines":
                progress.advance("baselines", cell_id)
    watcher.poll()
