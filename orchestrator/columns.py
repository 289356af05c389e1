"""What every column of a sweep's tables holds: its unit and meaning (with the direction, where one is better).

The one home of the column reference: `--explain` and docs/reference.md print it, and a test checks it
against the tables of a finished tiny sweep (every column present is documented, every documented column
exists). The trials table also has one column per p-diff knob (`pdiff.pipeline.KNOB_DOCS`).
"""

from __future__ import annotations

from pdiff.pipeline import KNOB_DOCS

__all__ = ["COLUMNS", "KNOB_TABLE", "columns_of"]

_COMMON = {
    "sweep": ("name", "the sweep's name"),
    "spec_hash": ("hash", "hash of the spec fields that define the results (not storage, resources)"),
    "schema_version": ("int", "version of the table layout"),
    "cell_id": ("id", "the source model: arch-dataset-seed-<hash of its training settings>"),
}
_FAMILY = {  # collapse signals of a family of models (pdiff.evaluate.family_stats)
    "pairwise_iou": ("0..1", "mean IoU of the models' wrong-prediction sets over pairs (1 = all alike); lower is better"),
    "distinct_sets": ("count", "how many different wrong-prediction sets the family has; higher is better"),
    "spread_ratio": ("ratio", "the family's RMS distance to its centroid over the snapshots' (1 = as spread)"),
    "collapsed": ("bool", "pairwise_iou above the collapse threshold or spread_ratio below it; false is better"),
}
_VECTOR = {  # one row per parameter vector (a generated or baseline model)
    "index": ("int", "the vector's number within its family"),
    "val_acc": ("fraction 0..1", "accuracy on the validation split; higher is better"),
    "test_acc": ("fraction 0..1", "accuracy on the test split; higher is better"),
    "max_iou_to_train": ("0..1", "test max IoU of its wrong-prediction set to any snapshot (1 = a copy); "
                                 "lower is more novel"),
    "nearest_l2": ("L2 distance", "distance to the nearest training snapshot in parameter space; "
                                  "higher is more novel"),
    "params": ("float32 list", "the subset's parameter values, flattened"),
}

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
        "snapshot_pairwise_iou": ("0..1", "mean pairwise IoU of the snapshots' wrong-prediction sets (test)"),
        "snapshot_distinct_sets": ("count", "different wrong-prediction sets among the snapshots (test)"),
        "snapshot_spread": ("L2 distance", "RMS distance of the snapshots to their centroid"),
    },
    "checkpoints": _COMMON | {
        "index": ("int", "snapshot number, in collection order"),
        "val_acc": ("fraction 0..1", "validation accuracy of the snapshot; higher is better"),
        "test_acc": ("fraction 0..1", "test accuracy of the snapshot; higher is better"),
        "params": ("float32 list", "the subset's parameter values, flattened"),
    },
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
        "mean_max_iou": ("0..1", "mean over generated models of the test max IoU to any snapshot; lower is more novel"),
        "novelty": ("0..1", "the same as mean_max_iou (test split); lower is more novel (1 = copies)"),
        "val_novelty": ("0..1", "as novelty, on the validation split (the second Tune objective); lower is more novel"),
        "ae_loss": ("MSE", "last training loss of the autoencoder (normalised units); lower is better"),
        "ae_r2": ("0..1", "share of the snapshots' variance the AE reconstructs; higher is better"),
        "ae_steps_taken": ("steps", "AE steps actually run (<= ae_steps)"),
        "ae_converged": ("bool", "whether the AE reached ae_min_r2 within ae_steps"),
        "ldm_loss": ("MSE", "last training loss of the latent diffusion model; lower is better"),
        "seconds": ("s", "wall time of the trial"),
        "node_id": ("Ray node id", "node that ran it (null for a trial recorded by the driver)"),
    },
    "generated": _COMMON | {"trial_id": ("id", "the trial that generated it")} | _VECTOR,
    "baselines": _COMMON | {"method": ("name", "the baseline (pdiff.baselines)")} | _VECTOR
                 | {f"family_{k}": (u, f"the method's family: {m}") for k, (u, m) in _FAMILY.items()},
}
KNOB_TABLE = "trials"  # the table that also has one column per p-diff knob


def columns_of(table: str) -> dict[str, tuple[str, str]]:
    """Every documented column of `table`, the knob columns of the trials table included."""
    cols = dict(COLUMNS[table])
    if table == KNOB_TABLE:
        cols |= {k: ("knob", f"p-diff knob: {doc}") for k, doc in KNOB_DOCS.items()}
    return cols
