"""DuckDB over a sweep's Parquet tables: one view per table, and the per-cell summary query."""

from __future__ import annotations

import duckdb

from .tables import TABLES, Store

__all__ = ["connect", "SUMMARY_SQL", "summary"]


def connect(store: Store) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per table (`sources`, `checkpoints`, `trials`, ...).

    Local tables are read lazily by DuckDB itself; tables on an object store are
    read through pyarrow (which holds the credentials and endpoint) and registered.
    """
    con = duckdb.connect()
    for table in TABLES:
        files = store.files(table)
        if files and store.is_local:
            listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listing}], union_by_name = true)")
        else:
            con.register(table, store.read(table))
    return con


# One row per cell: the source model, its snapshots, the val-selected p-diff trial, the baselines.
SUMMARY_SQL = """
WITH originals AS (
    SELECT cell_id, 100 * max(test_acc) AS original_best, 100 * avg(test_acc) AS original_mean
    FROM checkpoints GROUP BY cell_id
), best_trial AS (
    SELECT cell_id, first(trial_id ORDER BY val_acc DESC, val_novelty ASC, trial_id) AS trial_id,
           count(*) AS trials
    FROM trials WHERE status = 'completed' GROUP BY cell_id
), pdiff AS (
    SELECT t.cell_id, b.trials, t.trial_id, t.selected_acc AS pdiff_selected, t.best_test_acc AS pdiff_best_test,
           t.mean_acc AS pdiff_mean, t.median_acc AS pdiff_median, t.novelty AS pdiff_max_iou
    FROM trials t JOIN best_trial b USING (cell_id, trial_id)
), baseline AS (
    SELECT cell_id, method,
           100 * first(test_acc ORDER BY val_acc DESC, "index") AS selected, 100 * avg(test_acc) AS mean,
           avg(max_iou_to_train) AS max_iou
    FROM baselines GROUP BY cell_id, method
)
SELECT s.arch, s.dataset, s.seed, s.cell_id,
       round(o.original_best, 2) AS original_best, round(o.original_mean, 2) AS original_mean,
       p.trials, round(p.pdiff_selected, 2) AS pdiff_selected, round(p.pdiff_best_test, 2) AS pdiff_best_test_paper,
       round(p.pdiff_mean, 2) AS pdiff_mean, round(p.pdiff_median, 2) AS pdiff_median,
       round(p.pdiff_max_iou, 3) AS pdiff_max_iou,
       round(n.selected, 2) AS noise_selected, round(n.mean, 2) AS noise_mean, round(n.max_iou, 3) AS noise_max_iou,
       round(a.selected, 2) AS average_selected, round(a.mean, 2) AS average_mean,
       round(a.max_iou, 3) AS average_max_iou,
       round(g.selected, 2) AS gaussian_selected, round(g.mean, 2) AS gaussian_mean,
       round(g.max_iou, 3) AS gaussian_max_iou
FROM sources s
LEFT JOIN originals o USING (cell_id)
LEFT JOIN pdiff p USING (cell_id)
LEFT JOIN baseline n ON n.cell_id = s.cell_id AND n.method = 'noise'
LEFT JOIN baseline a ON a.cell_id = s.cell_id AND a.method = 'average'
LEFT JOIN baseline g ON g.cell_id = s.cell_id AND g.method = 'gaussian'
ORDER BY s.arch, s.dataset, s.seed
"""


def summary(store: Store):
    """The per-cell summary as a pandas DataFrame (accuracies in percent)."""
    return connect(store).execute(SUMMARY_SQL).df()
