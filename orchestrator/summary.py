"""DuckDB over a sweep's Parquet tables: one view per table, and the per-cell summary query."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from .tables import TABLES, CorruptTable, Store

__all__ = ["COLLAPSE_COLUMNS", "connect", "fill_missing_columns", "open_views", "one_line", "SUMMARY_SQL", "summary"]


def open_views(store: Store) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """An in-memory DuckDB with a view per readable table, and {table: one-line error} for the others.

    Local tables are read lazily by DuckDB itself; tables on an object store are
    read through pyarrow (which holds the credentials and endpoint) and registered.
    A table with an unreadable file (e.g. truncated) gets no view: only queries
    that read it fail, with the error naming the file. Tables of another schema
    version are not read at all: OldTables (one line naming the folder).
    """
    store.check_schema()
    con = duckdb.connect()
    corrupt: dict[str, str] = {}
    for table in TABLES:
        try:
            files = store.files(table)
            if files and store.is_local:
                listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                try:  # union_by_name reads every file's footer now, so a truncated file fails here
                    con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listing}], "
                                "union_by_name = true)")
                except duckdb.Error as err:
                    try:  # raises CorruptTable naming the file, in the words of `tables`
                        store.read(table, columns=["cell_id"])
                    except (pa.ArrowException, OSError):
                        pass  # not a footer: DuckDB's own message (it names the file) says more
                    raise CorruptTable(f"{table}: {one_line(err)}") from None
            else:
                con.register(table, store.read(table))
        except CorruptTable as err:
            corrupt[table] = one_line(err)
        except (pa.ArrowException, OSError) as err:  # e.g. a damaged page of an object-store file
            corrupt[table] = f"{table}: {one_line(err)}"
    return con, corrupt


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per table (`sources`, `checkpoints`, `trials`, ...).

    Columns the summary reads that a sweep written before them lacks (COLLAPSE_COLUMNS) are NULL
    (`fill_missing_columns`). Raises CorruptTable (one line, naming the file) if any table has an
    unreadable file, OldTables if the tables are of another schema version."""
    con, corrupt = open_views(store)
    if corrupt:
        con.close()
        raise CorruptTable(next(iter(corrupt.values())))
    fill_missing_columns(con)
    return con


# Columns added after the first sweeps were written (the collapse signals, the AE's stopping rule), by table.
COLLAPSE_COLUMNS: dict[str, dict[str, str]] = {
    "trials": {"pairwise_iou": "DOUBLE", "distinct_sets": "BIGINT", "spread_ratio": "DOUBLE",
               "collapsed": "BOOLEAN", "ae_converged": "BOOLEAN", "ae_r2": "DOUBLE", "ae_steps_taken": "BIGINT"},
    "baselines": {"family_pairwise_iou": "DOUBLE", "family_distinct_sets": "BIGINT",
                  "family_spread_ratio": "DOUBLE", "family_collapsed": "BOOLEAN"},
    "sources": {"snapshot_pairwise_iou": "DOUBLE", "snapshot_distinct_sets": "BIGINT", "snapshot_spread": "DOUBLE"},
}


def fill_missing_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Give each view the COLLAPSE_COLUMNS it lacks, as typed NULLs; returns {table: [columns added]}.

    A sweep written before a column existed then still summarises: its collapse signals read as
    unknown (NULL, shown as n/a), not as an error. The original view stays as `_<table>_stored`."""
    added: dict[str, list[str]] = {}
    for table, wanted in COLLAPSE_COLUMNS.items():
        try:
            have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        except duckdb.Error:  # no view (an unreadable table): the queries that read it say so
            continue
        missing = [c for c in wanted if c not in have]
        if not missing:
            continue
        con.execute(f"ALTER VIEW {table} RENAME TO _{table}_stored")
        nulls = ", ".join(f'NULL::{wanted[c]} AS "{c}"' for c in missing)
        con.execute(f"CREATE VIEW {table} AS SELECT *, {nulls} FROM _{table}_stored")
        added[table] = missing
    return added


def one_line(err: BaseException | str) -> str:
    """An error's first line (DuckDB appends the statement and a caret on further lines)."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


# One row per cell: the source model, its snapshots, the val-selected p-diff trial, the baselines.
# Only completed trials count; `failed_trials` says how many failed (status 'failed', or 'error' for a
# trial Ray gave up on). Trials stopped early by the scheduler are neither.
# Collapse (pdiff.evaluate.family_stats): `*_pairwise_iou` is the mean IoU of the wrong-prediction sets
# inside a family (p-diff: the best trial's N models; a baseline's models; the snapshots), 1 = all alike;
# `pdiff_collapsed` the best trial's flag (pairwise IoU >= 0.99 or spread ratio < 0.05); `collapsed_trials`
# how many completed trials of the cell are collapsed. NULL where the tables predate these columns.
SUMMARY_SQL = """
WITH originals AS (
    SELECT cell_id, 100 * max(test_acc) AS original_best, 100 * avg(test_acc) AS original_mean
    FROM checkpoints GROUP BY cell_id
), best_trial AS (
    SELECT cell_id, first(trial_id ORDER BY val_acc DESC, val_max_iou ASC, trial_id) AS trial_id,
           count(*) AS trials,
           CASE WHEN count(collapsed) > 0 THEN count(*) FILTER (WHERE collapsed) END AS collapsed_trials
    FROM trials WHERE status = 'completed' GROUP BY cell_id
), failed AS (
    SELECT cell_id, count(*) AS failed_trials FROM trials WHERE status IN ('failed', 'error') GROUP BY cell_id
), pdiff AS (
    SELECT t.cell_id, b.trials, t.trial_id, t.selected_acc AS pdiff_selected, t.best_test_acc AS pdiff_best_test,
           t.mean_acc AS pdiff_mean, t.median_acc AS pdiff_median, t.test_max_iou AS pdiff_max_iou,
           t.pairwise_iou AS pdiff_pairwise_iou, t.distinct_sets AS pdiff_distinct_sets,
           t.spread_ratio AS pdiff_spread_ratio, t.collapsed AS pdiff_collapsed, t.ae_converged, b.collapsed_trials
    FROM trials t JOIN best_trial b USING (cell_id, trial_id)
), baseline AS (
    SELECT cell_id, method,
           100 * first(test_acc ORDER BY val_acc DESC, "index") AS selected, 100 * avg(test_acc) AS mean,
           avg(test_max_iou) AS max_iou, max(family_pairwise_iou) AS pairwise_iou
    FROM baselines GROUP BY cell_id, method
)
SELECT s.arch, s.dataset, s.seed, s.cell_id,
       round(o.original_best, 2) AS original_best, round(o.original_mean, 2) AS original_mean,
       round(s.snapshot_pairwise_iou, 3) AS snapshot_pairwise_iou, s.snapshot_distinct_sets,
       p.trials, coalesce(f.failed_trials, 0) AS failed_trials,
       round(p.pdiff_selected, 2) AS pdiff_selected, round(p.pdiff_best_test, 2) AS pdiff_best_test_paper,
       round(p.pdiff_mean, 2) AS pdiff_mean, round(p.pdiff_median, 2) AS pdiff_median,
       round(p.pdiff_max_iou, 3) AS pdiff_max_iou,
       round(p.pdiff_pairwise_iou, 3) AS pdiff_pairwise_iou, p.pdiff_distinct_sets,
       round(p.pdiff_spread_ratio, 3) AS pdiff_spread_ratio, p.pdiff_collapsed, p.ae_converged,
       p.collapsed_trials,
       round(n.selected, 2) AS noise_selected, round(n.mean, 2) AS noise_mean, round(n.max_iou, 3) AS noise_max_iou,
       round(n.pairwise_iou, 3) AS noise_pairwise_iou,
       round(a.selected, 2) AS average_selected, round(a.mean, 2) AS average_mean,
       round(a.max_iou, 3) AS average_max_iou, round(a.pairwise_iou, 3) AS average_pairwise_iou,
       round(g.selected, 2) AS gaussian_selected, round(g.mean, 2) AS gaussian_mean,
       round(g.max_iou, 3) AS gaussian_max_iou, round(g.pairwise_iou, 3) AS gaussian_pairwise_iou
FROM sources s
LEFT JOIN originals o USING (cell_id)
LEFT JOIN pdiff p USING (cell_id)
LEFT JOIN failed f USING (cell_id)
LEFT JOIN baseline n ON n.cell_id = s.cell_id AND n.method = 'noise'
LEFT JOIN baseline a ON a.cell_id = s.cell_id AND a.method = 'average'
LEFT JOIN baseline g ON g.cell_id = s.cell_id AND g.method = 'gaussian'
ORDER BY s.arch, s.dataset, s.seed
"""


def summary(store: Store):
    """The per-cell summary as a pandas DataFrame (accuracies in percent)."""
    return connect(store).execute(SUMMARY_SQL).df()
