"""One stage-2 trial, and the baselines of a cell, as Ray runs them.

A trial trains the AE and the latent DDPM on the cell's snapshots, generates N vectors, scores them on val
and test, judges the family against the references (the baselines and its own latent Gaussian), and writes
its `generated` rows, its generator, its `curves` and last its `trials` row (the commit marker). A trial
that diverges or raises writes a `failed` row instead. `trials_row` builds every `trials` row, including
the ones the driver writes for trials that never wrote their own (search.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

import ray
import torch

from orchestrator.runtime.progress import step_reporter
from orchestrator.spec import Cell, SweepSpec
from orchestrator.stage1.cells import load_snapshot_scores, source_evaluator
from orchestrator.stage2.curves import LossRecorder, write_curves
from orchestrator.stage2.generators import save_trial_model
from orchestrator.store.columns import RENAMED
from orchestrator.store.tables import Store
from pdiff import load_dataset
from pdiff.compare import judge
from pdiff.evaluate import max_iou, pack_wrong
from pdiff.pipeline import Diverged, reference_families, run_baselines, run_pdiff
from pdiff.verdicts import family_verdict

__all__ = ["PROBES", "STORAGE", "trial_id_of", "trial_identity", "trials_row", "reason_text", "run_trial",
           "cell_baselines"]

PROBES = 3  # intermediate reports per training phase, when early stopping is on
STORAGE = "storage"  # a trial's last phase when the storage failed under it: no row, the trial stays unfinished


def trial_id_of(cell_id: str, knobs: dict[str, Any], index: int) -> str:
    """A trial is identified by its content: the cell, the knob values and its index in the
    cell's search, so two trials that draw the same values (repeats of a fixed configuration,
    a re-suggested point) are two trials with their own seeds and files."""
    content = json.dumps([cell_id, sorted(knobs.items()), index], default=str)
    return "t" + hashlib.sha256(content.encode()).hexdigest()[:10]


def trial_identity(spec: SweepSpec, cell: Cell, config: dict) -> tuple[str, int, dict[str, Any]]:
    """(trial id, trial index, every knob) of a Tune config (searched knobs + `trial_index`)."""
    config = dict(config)
    index = int(config.pop("trial_index"))
    knobs = spec.fixed | config
    return trial_id_of(cell.cell_id, knobs, index), index, knobs


def trials_row(spec: SweepSpec, trial_id: str, index: int, knobs: dict[str, Any], status: str,
               measures: dict[str, Any], node_id: str | None = None) -> dict[str, Any]:
    """A `trials` row from its parts: the knob columns, what the trial measured, and last (so that no
    measure overwrites them) its identity, the search it belongs to, its status and its node. A measure in
    percent (pdiff's summary, the Tune metrics: `val_acc`, ...) is stored with its `_pct` suffix (RENAMED)."""
    measures = {RENAMED["trials"].get(k, k): v for k, v in measures.items()}
    return knobs | measures | {"trial_id": trial_id, "trial_index": index, "search_hash": spec.search_hash,
                               "status": status, "node_id": node_id}


def reason_text(text: str) -> str:
    """A failure's reason as the `trials.reason` column holds it: one line, at most 500 characters."""
    return " ".join(str(text).split())[:500]


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def _threads(spec: SweepSpec) -> int:
    return max(1, int(spec.trial_resources.cpus))


def _setup(store: Store, cell: Cell, threads: int):
    """(data, evaluator, the snapshots' scores, device) of a task working on `cell`."""
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
    data = load_dataset(cell.dataset, seed=cell.seed)
    evaluator = source_evaluator(store, cell.cell_id, cell.arch, cell.subset, data, device)
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


def run_trial(config: dict, *, spec: SweepSpec, cell: Cell, store: Store, snapshots: torch.Tensor,
              sink=None) -> None:
    """Ray Tune function trainable: one p-diff configuration on one cell; its steps go to `sink`
    (the driver's `Progress.sink`)."""
    # ray.tune takes seconds to import: loaded where a trial runs, not by every reader of this module
    from ray import tune

    t0 = time.perf_counter()
    trial_id, index, knobs = trial_identity(spec, cell, config)
    cfg = spec.pdiff_config(knobs)
    data, evaluator, snap_scores, device = _setup(store, cell, _threads(spec))
    # Keeps every loss it sees (the curve of a run that raises) and passes it on to the progress lines.
    recorder = LossRecorder(step_reporter(sink, trial_id, f"{cell.cell_id} trial {trial_id}",
                                          {"ae": cfg.ae.steps, "ldm": cfg.ldm.steps}))
    seed = spec.seed + int(trial_id[1:], 16) % 2**31
    try:
        run = run_pdiff(snapshots, evaluator, data, snap_scores, cfg, seed=seed, device=device,
                        probes=PROBES if spec.grace_period is not None else 0, on_step=recorder,
                        on_probe=lambda phase, step, acc: tune.report({"val_acc": 100 * acc, "phase": phase}))
        divergence = _divergence(run)
        if divergence:
            raise Diverged(divergence)
    except Exception as err:  # Diverged, or any error of the method itself: a failed trial, not a number
        # Stored and reported once, not raised: Tune would retry an error (FailureConfig), and a
        # deterministic failure fails again. (Tune's stop request is SystemExit and passes through.)
        reason = reason_text(err.reason if isinstance(err, Diverged) else f"{type(err).__name__}: {err}")
        store.delete("generated", cell.cell_id, trial_id)
        write_curves(store, cell.cell_id, trial_id, recorder)  # the losses up to the failure, before the row
        store.write("trials", cell.cell_id, trial_id, [trials_row(
            spec, trial_id, index, _hyper(cfg), "failed",
            {"reason": reason, "seconds": time.perf_counter() - t0}, _node_id())])
        tune.report({"phase": "failed", "reason": reason})  # no metric: Optuna gets FAIL (see the searcher)
        return
    g = run.generated
    result = {"val_acc": 100 * float(g.scores.val_acc.max()), "val_max_iou": g.summary["val_max_iou"],
              "val_mean_acc": 100 * float(g.scores.val_acc.mean())}
    judged = _judge(spec, cell, run, snapshots, evaluator, data, snap_scores, seed)
    store.write("generated", cell.cell_id, trial_id, [{"trial_id": trial_id} | r for r in _vector_rows(g)])
    save_trial_model(store, cell.cell_id, trial_id, run, cfg, seed)  # before the row: the row is the commit marker
    write_curves(store, cell.cell_id, trial_id, recorder, run)  # every step's loss, decimated
    store.write("trials", cell.cell_id, trial_id, [trials_row(
        spec, trial_id, index, _hyper(cfg), "completed", g.summary | result | judged | {
            "ae_loss": run.ae_loss, "ldm_loss": run.ldm_loss, "ae_steps_taken": run.ae_steps, "ae_r2": run.ae_r2,
            "ae_fidelity": run.ae_fidelity, "ae_converged": run.ae_converged, "seconds": time.perf_counter() - t0,
        }, _node_id())])
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
def cell_baselines(spec: SweepSpec, cell: Cell, store: Store, snapshots: torch.Tensor) -> str:
    """The cell's `baselines` rows: every baseline family, drawn with the seed its trials judge against."""
    data, evaluator, snap_scores, _ = _setup(store, cell, _threads(spec))
    n = spec.pdiff_config({}).n_generated
    results = run_baselines(snapshots, evaluator, data, snap_scores, n, seed=_baseline_seed(spec, cell),
                            noise_sigma=spec.noise_sigma)
    loo = _snapshot_loo(snap_scores)
    # One file for all methods: the cell's baselines appear together or not at all.
    store.write("baselines", cell.cell_id, "baselines",
                [{"method": name} | row | _family_columns(a, loo)
                 for name, a in results.items() for row in _vector_rows(a)])
    return cell.cell_id
