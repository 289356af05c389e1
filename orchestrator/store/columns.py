"""What every column of a sweep's tables holds: its unit and meaning (with the direction, where one is better).

The one home of the column reference: `--explain` and docs/reference.md print it, and a test checks it
against the tables of a finished tiny sweep (every column present is documented, every documented column
exists). The trials table also has one column per p-diff knob (`pdiff.pipeline.KNOB_DOCS`).
"""

from __future__ import annotations

from pdiff.names import LABELS
from pdiff.pipeline import KNOB_DOCS
from pdiff.verdicts import COMPARISONS, VERDICTS

__all__ = ["COLUMNS", "KNOB_TABLE", "columns_of"]

_COMMON = {
    "sweep": ("name", "the sweep's name"),
    "spec_hash": ("hash", "hash of the spec fields that define the results (not storage, resources)"),
    "schema_version": ("int", "version of the table layout (orchestrator.store.tables.SCHEMA_VERSION; other versions are refused)"),
    "cell_id": ("id", "the source model: arch-dataset-seed-<hash of its training settings>"),
}
_FAMILY = {  # collapse signals of a family of models (pdiff.evaluate.family_stats)
    "pairwise_iou": ("0..1", "mean IoU of the models' wrong-prediction sets over pairs (1 = all alike); lower is better"),
    "distinct_sets": ("count", "how many different wrong-prediction sets the family has; higher is better"),
    "spread_ratio": ("ratio", "the family's RMS distance to its centroid over the snapshots' (1 = as spread)"),
    "collapsed": ("bool", "pairwise_iou above the collapse threshold or spread_ratio below it; false is better"),
}
_VERDICT = ("|".join(VERDICTS), "collapsed: one model; memorising: mean test max-IoU to the snapshots >= the "
                                "snapshots' leave-one-out (sources.snapshot_loo_max_iou); novel: neither "
                                "(pdiff.verdicts)")
_REFERENCES = {"latent_gaussian": "its own autoencoder decoding latents drawn from a Gaussian fitted to the encoded "
                                  "snapshots (no diffusion model)"} | {
    m: f"the {label} baseline (the same vectors as the baselines table)" for m, (label, _) in LABELS.items()}
# Each trial against each reference family: paired bootstrap over test examples and models (pdiff.compare).
_VERSUS = {
    column: doc for ref, what in _REFERENCES.items() for column, doc in {
        f"vs_{ref}": ("|".join(COMPARISONS), f"the trial's family against {what}, judged from the 95% intervals "
                                             "below (a side counts only when its interval excludes 0)"),
        f"vs_{ref}_acc_diff": ("pp", f"mean test accuracy of the trial's models minus that of {ref}'s"),
        f"vs_{ref}_acc_lo": ("pp", "lower end of its 95% interval"),
        f"vs_{ref}_acc_hi": ("pp", "upper end of its 95% interval"),
        f"vs_{ref}_iou_diff": ("IoU", f"mean test max-IoU to the snapshots of the trial's models minus {ref}'s "
                                      "(negative: the trial's are more novel)"),
        f"vs_{ref}_iou_lo": ("IoU", "lower end of its 95% interval"),
        f"vs_{ref}_iou_hi": ("IoU", "upper end of its 95% interval"),
    }.items()}
_WRONG = {  # a model's wrong-prediction sets, as pdiff.evaluate.pack_wrong stores them
    "val_wrong": ("packed bits", "the validation examples the model gets wrong: bit i (most significant first) "
                                 "is example i; sources.n_val bits (pdiff.evaluate.unpack_wrong)"),
    "test_wrong": ("packed bits", "the test examples the model gets wrong, as val_wrong; sources.n_test bits"),
}
_VECTOR = {  # one row per parameter vector (a generated or baseline model)
    "index": ("int", "the vector's number within its family"),
    "val_acc": ("fraction 0..1", "accuracy on the validation split; higher is better"),
    "test_acc": ("fraction 0..1", "accuracy on the test split; higher is better"),
    "test_max_iou": ("0..1", "max IoU of its test wrong-prediction set to any snapshot's (1 = a copy); "
                             "lower is more novel"),
    "val_max_iou": ("0..1", "the same on the validation split; lower is more novel"),
    "nearest_l2": ("L2 distance", "distance to the nearest training snapshot in parameter space; "
                                  "higher is more novel"),
    "params": ("float32 list", "the subset's parameter values, flattened"),
} | _WRONG

COLUMNS: dict[str, dict[str, tuple[str, str]]] = {
    "sources": _COMMON | {
        "arch": ("name", "architecture of the source model"),
        "dataset": ("name", "dataset it is trained on"),
        "seed": ("int", "seed of its training"),
        "subset": ("list of names", "the parameter tensors p-diff learns (the subset)"),
        "n_subset": ("count", "numbers in the subset (the length of a parameter vector)"),
        "n_total": ("count", "parameters of the whole model"),
        "k": ("count", "snapshots collected"),
        "test_acc": ("fraction 0..1", "test accuracy of the trained source model; higher is better"),
        "seconds": ("s", "wall time of stage 1 for this cell"),
        "node_id": ("Ray node id", "node that trained it"),
        "model_path": ("path", "the source model's weights, relative to the sweep folder"),
        "resumed_from_epoch": ("epochs", "epochs done before the last restart (0: none)"),
        "n_val": ("count", "examples in the validation split (the bits of a packed val_wrong)"),
        "n_test": ("count", "examples in the test split (the bits of a packed test_wrong)"),
        "snapshot_pairwise_iou": ("0..1", "mean pairwise IoU of the snapshots' wrong-prediction sets (test)"),
        "snapshot_distinct_sets": ("count", "different wrong-prediction sets among the snapshots (test)"),
        "snapshot_spread": ("L2 distance", "RMS distance of the snapshots to their centroid"),
        "status": ("healthy|uniform|failed", "the collection's health check (pdiff.health): failed (diverged: no "
                                             "baselines or trials run for the cell), uniform (novelty unmeasurable)"),
        "reason": ("text", "why the status is not healthy, with the spec key to change (null when healthy)"),
        "source_val_acc": ("fraction 0..1", "validation accuracy of the source model (the collection's start)"),
        "snapshot_val_acc": ("fraction 0..1", "mean validation accuracy of the snapshots"),
        "snapshot_test_acc": ("fraction 0..1", "mean test accuracy of the snapshots"),
        "snapshot_loo_max_iou": ("0..1", "each snapshot's max-IoU of test mistakes to the *other* snapshots, "
                                         "averaged: the memorisation reference of every verdict"),
        "snapshot_loo_val_max_iou": ("0..1", "the same on the validation split"),
        "snapshot_loo_l2": ("L2 distance", "each snapshot's distance to its nearest other snapshot, averaged"),
    },
    "checkpoints": _COMMON | {
        "index": ("int", "snapshot number, in collection order"),
        "val_acc": ("fraction 0..1", "validation accuracy of the snapshot; higher is better"),
        "test_acc": ("fraction 0..1", "test accuracy of the snapshot; higher is better"),
        "params": ("float32 list", "the subset's parameter values, flattened"),
    } | _WRONG,
    "trials": _COMMON | _FAMILY | {
        "trial_id": ("id", "the trial: a hash of its cell, search and configuration"),
        "trial_index": ("int", "the trial's number within its cell's search"),
        "search_hash": ("hash", "hash of the spec's pdiff section (trials of another search are not resumed)"),
        "status": ("completed|stopped|failed", "how the trial ended (stopped: early stopping)"),
        "reason": ("text", "why a trial failed (null otherwise)"),
        "val_acc": ("% 0..100", "best validation accuracy of the generated models (the Tune metric); higher is better"),
        "selected_acc": ("% 0..100", "test accuracy of the generated model best on val; higher is better"),
        "best_test_acc": ("% 0..100", "best test accuracy among the generated models (chosen on test); higher is better"),
        "mean_acc": ("% 0..100", "mean test accuracy of the generated models; higher is better"),
        "median_acc": ("% 0..100", "median test accuracy of the generated models; higher is better"),
        "test_max_iou": ("0..1", "mean over the generated models of each one's test max IoU to any snapshot "
                                 "(1 = copies); lower is more novel"),
        "val_max_iou": ("0..1", "the same on the validation split: the Tune metric of the spec's `novelty` "
                                "objective (minimised); lower is more novel"),
        "ae_loss": ("MSE", "last training loss of the autoencoder (normalised units); lower is better"),
        "ae_r2": ("0..1", "share of the snapshots' variance the AE reconstructs; higher is better"),
        "ae_fidelity": ("0..1", "mean val IoU of each AE reconstruction's mistakes with its own snapshot's, at the "
                                "last check (NaN: R2 never reached); higher is better"),
        "ae_steps_taken": ("steps", "AE steps actually run (<= ae_steps)"),
        "ae_converged": ("bool", "whether the AE reached ae_min_r2, ae_min_fidelity and the snapshots' val accuracy within ae_steps"),
        "ldm_loss": ("MSE", "last training loss of the latent diffusion model; lower is better"),
        "val_mean_acc": ("% 0..100", "mean validation accuracy of the generated models (the Tune metric of the "
                                     "`mean_accuracy` objective); higher is better"),
        "verdict": _VERDICT,
        "snapshot_loo_max_iou": ("0..1", "the cell's sources.snapshot_loo_max_iou, the verdict's reference"),
        "latent_gaussian_mean_acc": ("% 0..100", f"mean test accuracy of {_REFERENCES['latent_gaussian']}"),
        "latent_gaussian_test_max_iou": ("0..1", "its mean test max-IoU to the snapshots; lower is more novel"),
        "latent_gaussian_verdict": (_VERDICT[0], "its verdict"),
        "seconds": ("s", "wall time of the trial"),
        "node_id": ("Ray node id", "node that ran it (null for a trial recorded by the driver)"),
    } | _VERSUS,
    "generated": _COMMON | {"trial_id": ("id", "the trial that generated it")} | _VECTOR,
    "baselines": _COMMON | {"method": ("name", "the baseline (pdiff.baselines)")} | _VECTOR
                 | {f"family_{k}": (u, f"the method's family: {m}") for k, (u, m) in _FAMILY.items()}
                 | {"family_verdict": (_VERDICT[0], f"the method's family: {_VERDICT[1]}")},
    "curves": _COMMON | {  # orchestrator.results.sections
        "trial_id": ("id", "the trial whose training it is (written before its trials row)"),
        "phase": ("ae|ldm", "the autoencoder's training or the latent diffusion model's"),
        "step": ("step", "the last training step (0-based) of the point"),
        "loss": ("MSE", "mean training loss of the steps since the previous point (at most 200 points per phase "
                        "and trial; each step's own loss where the phase has no more steps; for a failed trial, of "
                        "the steps reported before it failed); lower is better"),
    },
    "runs": _COMMON | {  # orchestrator.store.runs.RunRecord
        "cell_id": ("null", "a run covers the whole sweep (the file is runs/<run_id>.parquet)"),
        "run_id": ("id", "the run: r<UTC start time>-<random>"),
        "command": ("text", "the command line it ran"),
        "started_at": ("UTC time", "when it started (after the checks, once the folder is the sweep's)"),
        "ended_at": ("UTC time", "when the stages and the summary finished, or it failed (null: still running, "
                                 "or killed)"),
        "seconds": ("s", "ended_at - started_at"),
        "outcome": ("running|done|failed|interrupted|abandoned", "how the run ended (running: not ended, or "
                    "killed; abandoned: it never recorded its end, found so by the next run)"),
        "exit_status": ("int", "the command's exit status (0 done, 1 failed, 130 interrupted; null while running)"),
        "error": ("text", "the error a failed run raised; for an abandoned run, the run that found it (null "
                  "otherwise)"),
        "git_commit": ("hash", "git commit of orchestrator's source (null: not a git checkout)"),
        "git_dirty": ("bool", "whether tracked files differed from that commit (null: not a git checkout)"),
        "driver_host": ("name", "host name of the machine that ran the command"),
        "hosts": ("count", "alive Ray nodes (at the end; at the start while it runs)"),
        "cluster_cpus": ("count", "CPUs of the Ray cluster, as hosts"),
        "cluster_gpus": ("count", "GPUs of the Ray cluster, as hosts"),
        "python_version": ("version", "Python of the driver"),
    } | {f"{p}_version": ("version", f"{p} installed on the driver") for p in ("torch", "ray", "optuna", "pyarrow",
                                                                               "duckdb")},
}
KNOB_TABLE = "trials"  # the table that also has one column per p-diff knob


def columns_of(table: str) -> dict[str, tuple[str, str]]:
    """Every documented column of `table`, the knob columns of the trials table included."""
    cols = dict(COLUMNS[table])
    if table == KNOB_TABLE:
        cols |= {k: ("knob", f"p-diff knob: {doc}") for k, doc in KNOB_DOCS.items()}
    return cols
