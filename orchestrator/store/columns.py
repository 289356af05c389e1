"""The column registry: every column of every table, declared once, with its Arrow type, unit and meaning.

What derives from it: the declared schemas (`orchestrator.store.schema.TABLES`, `HEAVY`), the column reference
(`--explain`, docs/reference.md; a test checks it against the tables of a finished tiny sweep), and the
columns the summary reads that older sweeps lack (`orchestrator.results.views.COLLAPSE_COLUMNS`). The trials
table also has one column per p-diff knob (`KNOB_TABLE`), typed from the trial's value: the knobs are declared
in `pdiff.config` (`KNOBS`, `KNOB_DOCS`), not here.

Units as stored: an accuracy is a fraction (0..1) unless its name ends in `_pct` (a percent, 0..100: the
trials table's, e.g. `trials.val_acc_pct`); `pp` columns are differences of percents. Each written Parquet file
carries its columns' unit and meaning in its fields' metadata (`schema.described`). A column renamed since
(`Column.was`: the trials table's percents were `val_acc`, ...) reads under its new name from older sweeps
(`schema.current`, the DuckDB views), whose files stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pdiff.names import LABELS
from pdiff.verdicts import COMPARISONS, VERDICTS

__all__ = ["COLUMNS", "KNOB_TABLE", "RENAMED", "UNITS", "Column"]

# The units of numeric columns, and how the reference writes each.
UNITS = {
    "fraction": "fraction 0..1",  # an accuracy: the share of a split's examples
    "percent": "% 0..100",  # an accuracy in percent: the column's name ends in _pct (the trials table's)
    "pp": "pp",  # percentage points: a difference of two percents
    "score": "0..1",  # an IoU, a share of variance (R2)
    "score_diff": "IoU",  # a difference of two mean IoUs
    "seconds": "s",
    "count": "count",
    "ratio": "ratio",
    "mse": "MSE",
    "l2": "L2 distance",
    "epochs": "epochs",
    "steps": "steps",
}
STR, F64, I64, BOOL = pa.string(), pa.float64(), pa.int64(), pa.bool_()
UTC = pa.timestamp("us", tz="UTC")
# What the reference says a column without a unit holds, by its type (a string column says it itself).
_VALUES = {pa.int32(): "int", I64: "int", BOOL: "bool", UTC: "UTC time", pa.binary(): "packed bits",
           pa.list_(STR): "list of names", pa.list_(pa.float32()): "float32 list"}


@dataclass(frozen=True)
class Column:
    """One column of a table."""

    name: str
    type: pa.DataType  # as stored; an added column's is the type its values are written as
    unit: str | None  # a key of UNITS; None: a name, id, flag, vector
    meaning: str  # one line, with the direction where one is better
    values: str | None = None  # what a column without a unit holds, where its type does not say (name, id, a|b)
    key: bool = False  # one of the columns that tell a table's rows apart
    heavy: bool = False  # a vector or packed set: most of a sweep's bytes, read only where named
    declared: bool = True  # in the table's declared schema; else added later, typed from its values when written
    filled: bool = False  # added later and read by the summary: NULL in the views of a sweep written before it
    was: str | None = None  # the name sweeps written before a rename stored it under (read as this one)

    @property
    def shown(self) -> str:
        """The reference's unit column."""
        return UNITS[self.unit] if self.unit else self.values or _VALUES[self.type]


def _added(name: str, type: pa.DataType, unit: str | None, meaning: str, **kw) -> Column:
    return Column(name, type, unit, meaning, declared=False, **kw)


def _filled(name: str, type: pa.DataType, unit: str | None, meaning: str, **kw) -> Column:
    return Column(name, type, unit, meaning, declared=False, filled=True, **kw)


def _percent(make, name: str, meaning: str) -> Column:
    """An accuracy in percent, `<name>_pct` (`make`: Column, _added or _filled); sweeps written before the
    suffix stored it as `<name>`."""
    return make(f"{name}_pct", F64, "percent", meaning, was=name)


def _family(prefix: str = "", what: str = "") -> list[Column]:
    """The collapse signals of a family of models (pdiff.evaluate.family_stats)."""
    return [
        _filled(f"{prefix}pairwise_iou", F64, "score", f"{what}mean IoU of the models' wrong-prediction sets over "
                "pairs (1 = all alike); lower is better"),
        _filled(f"{prefix}distinct_sets", I64, "count", f"{what}how many different wrong-prediction sets the "
                "family has; higher is better"),
        _filled(f"{prefix}spread_ratio", F64, "ratio", f"{what}the family's RMS distance to its centroid over the "
                "snapshots' (1 = as spread)"),
        _filled(f"{prefix}collapsed", BOOL, None, f"{what}pairwise_iou above the collapse threshold or "
                "spread_ratio below it; false is better"),
    ]


_COMMON = [
    Column("sweep", STR, None, "the sweep's name", values="name"),
    Column("spec_hash", STR, None, "hash of the spec fields that define the results (not storage, resources)",
           values="hash"),
    Column("schema_version", pa.int32(), None, "version of the table layout "
           "(orchestrator.store.schema.SCHEMA_VERSION; other versions are refused)"),
    Column("cell_id", STR, None, "the source model: arch-dataset-seed-<hash of its training settings>", values="id",
           key=True),
]
_VERDICT_VALUES = "|".join(VERDICTS)
_VERDICT = ("collapsed: one model; memorising: mean test max-IoU to the snapshots >= the snapshots' leave-one-out "
            "(sources.snapshot_loo_max_iou); novel: neither (pdiff.verdicts)")
_REFERENCES = {"latent_gaussian": "its own autoencoder decoding latents drawn from a Gaussian fitted to the encoded "
                                  "snapshots (no diffusion model)"} | {
    m: f"the {label} baseline (the same vectors as the baselines table)" for m, (label, _) in LABELS.items()}


def _versus(ref: str, what: str) -> list[Column]:
    """A trial against one reference family: paired bootstrap over test examples and models (pdiff.compare)."""
    return [
        _filled(f"vs_{ref}", STR, None, f"the trial's family against {what}, judged from the 95% intervals below (a "
                                        "side counts only when its interval excludes 0)", values="|".join(COMPARISONS)),
        _filled(f"vs_{ref}_acc_diff", F64, "pp", f"mean test accuracy of the trial's models minus that of {ref}'s"),
        _filled(f"vs_{ref}_acc_lo", F64, "pp", "lower end of its 95% interval"),
        _filled(f"vs_{ref}_acc_hi", F64, "pp", "upper end of its 95% interval"),
        _filled(f"vs_{ref}_iou_diff", F64, "score_diff", f"mean test max-IoU to the snapshots of the trial's models "
                                                         f"minus {ref}'s (negative: the trial's are more novel)"),
        _filled(f"vs_{ref}_iou_lo", F64, "score_diff", "lower end of its 95% interval"),
        _filled(f"vs_{ref}_iou_hi", F64, "score_diff", "upper end of its 95% interval"),
    ]


_WRONG_AND_PARAMS = [  # a model's wrong-prediction sets (as pdiff.evaluate.pack_wrong stores them), its vector
    Column("val_wrong", pa.binary(), None, "the validation examples the model gets wrong: bit i (most significant "
           "first) is example i; sources.n_val bits (pdiff.evaluate.unpack_wrong)", heavy=True),
    Column("test_wrong", pa.binary(), None, "the test examples the model gets wrong, as val_wrong; sources.n_test "
           "bits", heavy=True),
    Column("params", pa.list_(pa.float32()), None, "the subset's parameter values, flattened", heavy=True),
]
_VECTOR = [  # one row per parameter vector (a generated or baseline model)
    Column("index", I64, None, "the vector's number within its family", key=True),
    Column("val_acc", F64, "fraction", "accuracy on the validation split; higher is better"),
    Column("test_acc", F64, "fraction", "accuracy on the test split; higher is better"),
    Column("test_max_iou", F64, "score", "max IoU of its test wrong-prediction set to any snapshot's (1 = a copy); "
                                         "lower is more novel"),
    Column("val_max_iou", F64, "score", "the same on the validation split; lower is more novel"),
    Column("nearest_l2", F64, "l2", "distance to the nearest training snapshot in parameter space; "
                                    "higher is more novel"),
] + _WRONG_AND_PARAMS

VERSIONS = ("torch", "ray", "optuna", "pyarrow", "duckdb")  # packages whose versions each `runs` row records

COLUMNS: dict[str, list[Column]] = {
    "sources": _COMMON + [
        Column("arch", STR, None, "architecture of the source model", values="name"),
        Column("dataset", STR, None, "dataset it is trained on", values="name"),
        Column("seed", I64, None, "seed of its training"),
        Column("subset", pa.list_(STR), None, "the parameter tensors p-diff learns (the subset)"),
        Column("n_subset", I64, "count", "numbers in the subset (the length of a parameter vector)"),
        Column("n_total", I64, "count", "parameters of the whole model"),
        Column("k", I64, "count", "snapshots collected"),
        Column("test_acc", F64, "fraction", "test accuracy of the trained source model; higher is better"),
        Column("seconds", F64, "seconds", "wall time of stage 1 for this cell"),
        Column("node_id", STR, None, "node that trained it", values="Ray node id"),
        Column("model_path", STR, None, "the source model's weights, relative to the sweep folder", values="path"),
        Column("resumed_from_epoch", I64, "epochs", "epochs done before the last restart (0: none)"),
        Column("n_val", I64, "count", "examples in the validation split (the bits of a packed val_wrong)"),
        Column("n_test", I64, "count", "examples in the test split (the bits of a packed test_wrong)"),
        _filled("snapshot_pairwise_iou", F64, "score", "mean pairwise IoU of the snapshots' wrong-prediction sets "
                                                       "(test)"),
        _filled("snapshot_distinct_sets", I64, "count", "different wrong-prediction sets among the snapshots (test)"),
        _filled("snapshot_spread", F64, "l2", "RMS distance of the snapshots to their centroid"),
        _filled("status", STR, None, "the collection's health check (pdiff.health): failed (diverged: no baselines "
                "or trials run for the cell), uniform (novelty unmeasurable)", values="healthy|uniform|failed"),
        _filled("reason", STR, None, "why the status is not healthy, with the spec key to change (null when "
                "healthy)", values="text"),
        _added("source_val_acc", F64, "fraction", "validation accuracy of the source model (the collection's "
                                                  "start)"),
        _added("snapshot_val_acc", F64, "fraction", "mean validation accuracy of the snapshots"),
        _added("snapshot_test_acc", F64, "fraction", "mean test accuracy of the snapshots"),
        _filled("snapshot_loo_max_iou", F64, "score", "each snapshot's max-IoU of test mistakes to the *other* "
                "snapshots, averaged: the memorisation reference of every verdict"),
        _added("snapshot_loo_val_max_iou", F64, "score", "the same on the validation split"),
        _added("snapshot_loo_l2", F64, "l2", "each snapshot's distance to its nearest other snapshot, averaged"),
    ],
    "checkpoints": _COMMON + [
        Column("index", I64, None, "snapshot number, in collection order", key=True),
        Column("val_acc", F64, "fraction", "validation accuracy of the snapshot; higher is better"),
        Column("test_acc", F64, "fraction", "test accuracy of the snapshot; higher is better"),
    ] + _WRONG_AND_PARAMS,
    "trials": _COMMON + _family() + [
        Column("trial_id", STR, None, "the trial: a hash of its cell, search and configuration", values="id",
               key=True),
        _added("trial_index", I64, None, "the trial's number within its cell's search"),
        Column("search_hash", STR, None, "hash of the spec's pdiff section (trials of another search are not "
               "resumed)", values="hash"),
        Column("status", STR, None, "how the trial ended (stopped: early stopping)", values="completed|stopped|failed"),
        _percent(Column, "val_acc", "best validation accuracy of the generated models (the Tune metric, "
                                    "`val_acc`); higher is better"),
        _percent(Column, "selected_acc", "test accuracy of the generated model best on val; higher is better"),
        _percent(Column, "best_test_acc", "best test accuracy among the generated models (chosen on test); "
                                          "higher is better"),
        _percent(Column, "mean_acc", "mean test accuracy of the generated models; higher is better"),
        _percent(Column, "median_acc", "median test accuracy of the generated models; higher is better"),
        Column("test_max_iou", F64, "score", "mean over the generated models of each one's test max IoU to any "
                                             "snapshot (1 = copies); lower is more novel"),
        Column("val_max_iou", F64, "score", "the same on the validation split: the Tune metric of the spec's "
                                            "`novelty` objective (minimised); lower is more novel"),
        Column("ae_loss", F64, "mse", "last training loss of the autoencoder (normalised units); lower is better"),
        _filled("ae_r2", F64, "score", "share of the snapshots' variance the AE reconstructs; higher is better"),
        _filled("ae_fidelity", F64, "score", "mean val IoU of each AE reconstruction's mistakes with its own "
                "snapshot's, at the last check (NaN: R2 never reached); higher is better"),
        _filled("ae_steps_taken", I64, "steps", "AE steps actually run (<= ae_steps)"),
        _filled("ae_converged", BOOL, None, "whether the AE reached ae_min_r2, ae_min_fidelity and the snapshots' "
                "val accuracy within ae_steps"),
        Column("ldm_loss", F64, "mse", "last training loss of the latent diffusion model; lower is better"),
        _percent(_filled, "val_mean_acc", "mean validation accuracy of the generated models (the Tune metric "
                 "`val_mean_acc` of the `mean_accuracy` objective); higher is better"),
        _filled("verdict", STR, None, _VERDICT, values=_VERDICT_VALUES),
        _added("snapshot_loo_max_iou", F64, "score", "the cell's sources.snapshot_loo_max_iou, the verdict's "
                                                     "reference"),
        _percent(_added, "latent_gaussian_mean_acc", f"mean test accuracy of {_REFERENCES['latent_gaussian']}"),
        _added("latent_gaussian_test_max_iou", F64, "score", "its mean test max-IoU to the snapshots; lower is more "
                                                             "novel"),
        _added("latent_gaussian_verdict", STR, None, "its verdict", values=_VERDICT_VALUES),
        Column("seconds", F64, "seconds", "wall time of the trial"),
        Column("node_id", STR, None, "node that ran it (null for a trial recorded by the driver)",
               values="Ray node id"),
        Column("reason", STR, None, "why a trial failed (null otherwise)", values="text"),
    ] + [c for ref, what in _REFERENCES.items() for c in _versus(ref, what)],
    "generated": _COMMON + [
        Column("trial_id", STR, None, "the trial that generated it", values="id", key=True),
    ] + _VECTOR,
    "baselines": _COMMON + [
        Column("method", STR, None, "the baseline (pdiff.baselines)", values="name", key=True),
    ] + _VECTOR + _family("family_", "the method's family: ") + [
        _filled("family_verdict", STR, None, f"the method's family: {_VERDICT}", values=_VERDICT_VALUES),
    ],
    "curves": _COMMON + [  # a trial's training losses, decimated (orchestrator.results.sections reads them)
        Column("trial_id", STR, None, "the trial whose training it is (written before its trials row)", values="id",
               key=True),
        Column("phase", STR, None, "the autoencoder's training or the latent diffusion model's", values="ae|ldm",
               key=True),
        Column("step", I64, None, "the last training step (0-based) of the point", values="step", key=True),
        Column("loss", F64, "mse", "mean training loss of the steps since the previous point (at most 200 points "
               "per phase and trial; each step's own loss where the phase has no more steps; for a failed trial, "
               "of the steps reported before it failed); lower is better"),
    ],
    "runs": _COMMON[:-1] + [  # one row per run of the sweep command (orchestrator.store.runs.RunRecord), no cell
        Column("cell_id", STR, None, "a run covers the whole sweep (the file is runs/<run_id>.parquet)",
               values="null"),
        Column("run_id", STR, None, "the run: r<UTC start time>-<random>", values="id", key=True),
        Column("command", STR, None, "the command line it ran", values="text"),
        Column("started_at", UTC, None, "when it started (after the checks, once the folder is the sweep's)"),
        Column("ended_at", UTC, None, "when the stages and the summary finished, or it failed (null: still "
               "running, or killed)"),
        Column("seconds", F64, "seconds", "ended_at - started_at"),
        Column("outcome", STR, None, "how the run ended (running: not ended, or killed; abandoned: it never "
               "recorded its end, found so by the next run)", values="running|done|failed|interrupted|abandoned"),
        Column("exit_status", I64, None, "the command's exit status (0 done, 1 failed, 130 interrupted; null while "
               "running)"),
        Column("error", STR, None, "the error a failed run raised; for an abandoned run, the run that found it "
               "(null otherwise)", values="text"),
        Column("git_commit", STR, None, "git commit of orchestrator's source (null: not a git checkout)",
               values="hash"),
        Column("git_dirty", BOOL, None, "whether tracked files differed from that commit (null: not a git "
               "checkout)"),
        Column("driver_host", STR, None, "host name of the machine that ran the command", values="name"),
        Column("hosts", I64, "count", "alive Ray nodes (at the end; at the start while it runs)"),
        Column("cluster_cpus", F64, "count", "CPUs of the Ray cluster, as hosts"),
        Column("cluster_gpus", F64, "count", "GPUs of the Ray cluster, as hosts"),
        Column("python_version", STR, None, "Python of the driver", values="version"),
    ] + [Column(f"{p}_version", STR, None, f"{p} installed on the driver", values="version")
         for p in VERSIONS],
}
KNOB_TABLE = "trials"  # the table that also has one column per p-diff knob
# {table: {the name older sweeps stored a column under: its name now}} (`Column.was`).
RENAMED: dict[str, dict[str, str]] = {
    table: {c.was: c.name for c in columns if c.was}
    for table, columns in COLUMNS.items() if any(c.was for c in columns)}
