"""The tables' declared schemas: the key and value columns of each table, its version, which columns are heavy."""

from __future__ import annotations

import pyarrow as pa

# 2: per-model wrong-prediction sets (`val_wrong`, `test_wrong`, packed bits, pdiff.evaluate.pack_wrong)
#    in checkpoints / generated / baselines and the split sizes (`n_val`, `n_test`) in sources; the
#    max-IoU columns say their split (`test_max_iou`, `val_max_iou`: were trials.novelty / val_novelty,
#    generated / baselines max_iou_to_train). Folders of version 1 are refused (`Store.check_schema`).
SCHEMA_VERSION = 2

# Key columns of each table. Columns are only ever added, never retyped; the
# trials table also carries every p-diff knob as a column of its own.
_COMMON = [("sweep", pa.string()), ("spec_hash", pa.string()), ("schema_version", pa.int32()),
           ("cell_id", pa.string())]
TABLES: dict[str, pa.Schema] = {
    "sources": pa.schema(_COMMON + [
        ("arch", pa.string()), ("dataset", pa.string()), ("seed", pa.int64()), ("subset", pa.list_(pa.string())),
        ("n_subset", pa.int64()), ("n_total", pa.int64()), ("k", pa.int64()), ("test_acc", pa.float64()),
        ("seconds", pa.float64()), ("node_id", pa.string()), ("model_path", pa.string()),
        ("resumed_from_epoch", pa.int64()),  # added: epochs done before the last restart (0: none)
        ("n_val", pa.int64()), ("n_test", pa.int64()),  # the splits' sizes: the bits of a packed wrong set
    ]),
    "checkpoints": pa.schema(_COMMON + [
        ("index", pa.int64()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
        ("val_wrong", pa.binary()), ("test_wrong", pa.binary()), ("params", pa.list_(pa.float32())),
    ]),
    "trials": pa.schema(_COMMON + [
        ("trial_id", pa.string()), ("search_hash", pa.string()), ("status", pa.string()),
        ("val_acc", pa.float64()), ("selected_acc", pa.float64()), ("best_test_acc", pa.float64()),
        ("mean_acc", pa.float64()), ("median_acc", pa.float64()), ("test_max_iou", pa.float64()),
        ("val_max_iou", pa.float64()), ("ae_loss", pa.float64()), ("ldm_loss", pa.float64()),
        ("seconds", pa.float64()), ("node_id", pa.string()),
        ("reason", pa.string()),  # added: why a trial's status is 'failed' (null otherwise)
    ]),
    "generated": pa.schema(_COMMON + [
        ("trial_id", pa.string()), ("index", pa.int64()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
        ("test_max_iou", pa.float64()), ("val_max_iou", pa.float64()), ("nearest_l2", pa.float64()),
        ("val_wrong", pa.binary()), ("test_wrong", pa.binary()), ("params", pa.list_(pa.float32())),
    ]),
    "baselines": pa.schema(_COMMON + [
        ("method", pa.string()), ("index", pa.int64()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
        ("test_max_iou", pa.float64()), ("val_max_iou", pa.float64()), ("nearest_l2", pa.float64()),
        ("val_wrong", pa.binary()), ("test_wrong", pa.binary()), ("params", pa.list_(pa.float32())),
    ]),
    # Added (orchestrator.results.sections): a trial's training losses, decimated; one row per run of the sweep
    # command (no cell: `runs/<run_id>.parquet`, cell_id null).
    "curves": pa.schema(_COMMON + [
        ("trial_id", pa.string()), ("phase", pa.string()), ("step", pa.int64()), ("loss", pa.float64()),
    ]),
    "runs": pa.schema(_COMMON + [
        ("run_id", pa.string()), ("command", pa.string()), ("started_at", pa.timestamp("us", tz="UTC")),
        ("ended_at", pa.timestamp("us", tz="UTC")), ("seconds", pa.float64()), ("outcome", pa.string()),
        ("exit_status", pa.int64()), ("error", pa.string()), ("git_commit", pa.string()), ("git_dirty", pa.bool_()),
        ("driver_host", pa.string()), ("hosts", pa.int64()), ("cluster_cpus", pa.float64()),
        ("cluster_gpus", pa.float64()), ("python_version", pa.string()), ("torch_version", pa.string()),
        ("ray_version", pa.string()), ("optuna_version", pa.string()), ("pyarrow_version", pa.string()),
        ("duckdb_version", pa.string()),
    ]),
}

# The columns that hold vectors and packed wrong-prediction sets: most of a sweep's bytes. Readers that
# need none of them name their columns (`Store.read(columns=...)`, `light_columns`); DuckDB's views
# read a column only where a query names it.
HEAVY = ("params", "val_wrong", "test_wrong")
