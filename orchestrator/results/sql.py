"""Every query the results are read by, each rule written once: the summary, the report, the README's questions.

The rules:

- which trials count: the completed ones (`COMPLETED`); failed ones (`FAILED`: status 'failed', or 'error'
  for a trial Ray gave up on) are counted apart; trials stopped early by the scheduler are neither;
- the val-selected trial of a cell (`BEST_TRIAL_ORDER`): the best val accuracy; ties: the lower
  `val_max_iou`, then the smaller trial id;
- the val-selected model of a family (`SELECTED_ORDER`, a baseline's N models): the best val accuracy,
  ties to the lowest index (as torch.argmax);
- the baseline methods (`methods()`): `pdiff.names.METHODS`, the keys of `pdiff.baselines.BASELINES` in
  its order (kept apart from pdiff.baselines so that a query never imports torch).

Each CTE (`CTES`) is a template over the tables' names: `{trials}` is the view `trials` in a connection of
`orchestrator.results.views.connect` (`views`), as `orchestrator.query` has them, or
`read_parquet('<sweep>/trials/*/*.parquet', ...)` for DuckDB without the views (`files`). A test checks that
the README's ```sql blocks are `readme_questions()`, so that each runs as written in `orchestrator.query`.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Iterable, Sequence

from orchestrator.store.layout import inside  # re-exported: the readers' one rule for which local files may be read
from orchestrator.store.schema import TABLES
from pdiff.config import KNOBS
from pdiff.names import COLLAPSE_IOU, METHODS as names

__all__ = ["BEST_TRIAL_ORDER", "COMPLETED", "CTES", "FAILED", "SELECTED_ORDER", "ablation_sql", "completed_trials_sql",
           "curves_sql", "failed_reasons_sql", "files", "glob_escaped", "inside", "literal", "methods", "path_list",
           "readme_questions", "report_sql", "runs_sql", "searched_knobs", "summary_sql", "views", "with_ctes"]


@lru_cache(maxsize=None)
def methods() -> tuple[str, ...]:
    """The baseline methods: `pdiff.names.METHODS`, the names of `pdiff.baselines.BASELINES` in its order."""

    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", m) for m in names), names  # used as SQL names below
    return names


COMPLETED = "status = 'completed'"
FAILED = "status IN ('failed', 'error')"
BEST_TRIAL_ORDER = "val_acc_pct DESC, val_max_iou ASC, trial_id"
SELECTED_ORDER = 'val_acc DESC, "index"'

Source = Callable[[str], str]  # a table's name -> what a FROM clause reads it as


def views(table: str) -> str:
    """The tables as the views of `orchestrator.results.views.connect` (and `orchestrator.query`)."""
    return table


def literal(text: str) -> str:
    """`text` as a SQL string literal (single quotes doubled)."""
    return "'" + text.replace("'", "''") + "'"


def glob_escaped(path: str) -> str:
    """`path` as a DuckDB file pattern that matches only itself. DuckDB expands `*`, `?` and `[...]` in every
    path it reads, a list's items too (`results/tin?` would read `results/tiny` as well): each goes in brackets."""
    return re.sub(r"[*?\[]", lambda m: f"[{m.group()}]", path)


def path_list(paths: Iterable[str]) -> str:
    """A SQL list of file paths for `read_parquet([...])`, each matching only itself."""
    return "[" + ", ".join(literal(glob_escaped(p)) for p in paths) + "]"


def files(root: str) -> Source:
    """The tables read by path from a sweep's folder `root` (DuckDB without the views); a glob character in
    `root` stands for itself. Each row is read once only where no compaction was cut short (the views hold
    every row once in any case)."""
    return lambda table: (f"read_parquet({literal(glob_escaped(root) + f'/{table}/*/*.parquet')}, "
                          f"union_by_name = true)")


# One row per cell (originals, best_trial, trial_counts, failed), or per cell and baseline method (baseline).
# Collapse (pdiff.evaluate.family_stats): `collapsed_trials` counts the completed trials whose generated
# models collapsed, NULL where the tables predate the column; a baseline family's signals are on every row.
CTES: dict[str, str] = {
    "originals": """
    SELECT cell_id, 100 * max(test_acc) AS original_best, 100 * avg(test_acc) AS original_mean
    FROM {checkpoints} GROUP BY cell_id""",
    "best_trial": f"""
    SELECT cell_id, first(trial_id ORDER BY {BEST_TRIAL_ORDER}) AS trial_id
    FROM {{trials}}
    WHERE {COMPLETED} GROUP BY cell_id""",
    "trial_counts": f"""
    SELECT cell_id, count(*) AS trials,
           CASE WHEN count(collapsed) > 0 THEN count(*) FILTER (WHERE collapsed) END AS collapsed_trials,
           count(*) FILTER (WHERE verdict = 'memorising') AS memorising_trials, max(val_acc_pct) AS best_val
    FROM {{trials}}
    WHERE {COMPLETED} GROUP BY cell_id""",
    "failed": f"""
    SELECT cell_id, count(*) AS failed_trials FROM {{trials}} WHERE {FAILED} GROUP BY cell_id""",
    "baseline": f"""
    SELECT cell_id, method,
           100 * first(test_acc ORDER BY {SELECTED_ORDER}) AS selected, 100 * avg(test_acc) AS mean,
           100 * max(test_acc) AS best_test, 100 * quantile_disc(test_acc, 0.5) AS median,
           avg(test_max_iou) AS max_iou, max(family_pairwise_iou) AS pairwise_iou,
           max(family_distinct_sets) AS distinct_sets, max(family_spread_ratio) AS spread_ratio,
           bool_or(family_collapsed) AS collapsed
    FROM {{baselines}} GROUP BY cell_id, method""",
}


def _fill(template: str, src: Source) -> str:
    return template.format(**{t: src(t) for t in TABLES})


def with_ctes(names: Sequence[str], src: Source = views, *more: tuple[str, str]) -> str:
    """`WITH name AS (...), ...` for the named CTES (then any `more` (name, body) pairs), reading through `src`."""
    parts = [(n, _fill(CTES[n], src)) for n in names] + list(more)
    return "WITH " + ", ".join(f"{n} AS ({body}\n)" for n, body in parts)


def _references() -> tuple[str, ...]:
    """The families each trial is compared with (`trials.vs_<name>`): its latent Gaussian, the baselines."""
    return ("latent_gaussian", *methods())


def _join_baselines(on: str = "s") -> str:
    return "".join(f"\nLEFT JOIN baseline base_{m} ON base_{m}.cell_id = {on}.cell_id AND base_{m}.method = '{m}'"
                   for m in methods())


# One row per cell: the source model, its snapshots, the val-selected p-diff trial, the baselines.
# `*_pairwise_iou` is the mean IoU of the wrong-prediction sets inside a family (p-diff: the best trial's N
# models; a baseline's models; the snapshots), 1 = all alike; `pdiff_collapsed` the best trial's flag (pairwise
# IoU >= 0.99 or spread ratio < 0.05). NULL where the tables predate these columns.
_SUMMARY_CTES = ("originals", "best_trial", "trial_counts", "failed", "baseline")
_PDIFF = ("pdiff", """
    SELECT t.cell_id, c.trials, t.trial_id, t.selected_acc_pct AS pdiff_selected,
           t.best_test_acc_pct AS pdiff_best_test, t.mean_acc_pct AS pdiff_mean, t.median_acc_pct AS pdiff_median,
           t.test_max_iou AS pdiff_max_iou,
           t.pairwise_iou AS pdiff_pairwise_iou, t.distinct_sets AS pdiff_distinct_sets,
           t.spread_ratio AS pdiff_spread_ratio, t.collapsed AS pdiff_collapsed, t.ae_converged, c.collapsed_trials,
           t.verdict AS pdiff_verdict, c.memorising_trials,
           (SELECT count(*) FROM trials x WHERE x.cell_id = t.cell_id AND x.status = 'completed'
                                            AND x.val_acc_pct = c.best_val) AS tied_trials""" + "".join(
    f""",
           t.vs_{r} AS vs_{r}, t.vs_{r}_acc_diff, t.vs_{r}_acc_lo, t.vs_{r}_acc_hi,
           t.vs_{r}_iou_diff, t.vs_{r}_iou_lo, t.vs_{r}_iou_hi""" for r in _references()) + """
    FROM trials t JOIN best_trial b USING (cell_id, trial_id) JOIN trial_counts c USING (cell_id)""")


def _summary_select() -> str:
    return """
SELECT s.arch, s.dataset, s.seed, s.cell_id,
       round(o.original_best, 2) AS original_best, round(o.original_mean, 2) AS original_mean,
       round(s.snapshot_pairwise_iou, 3) AS snapshot_pairwise_iou, s.snapshot_distinct_sets,
       coalesce(s.status, 'healthy') AS collection, s.reason AS collection_reason,
       round(s.snapshot_loo_max_iou, 3) AS snapshot_loo_max_iou,
       p.trials, coalesce(f.failed_trials, 0) AS failed_trials,
       round(p.pdiff_selected, 2) AS pdiff_selected, round(p.pdiff_best_test, 2) AS pdiff_best_test_paper,
       round(p.pdiff_mean, 2) AS pdiff_mean, round(p.pdiff_median, 2) AS pdiff_median,
       round(p.pdiff_max_iou, 3) AS pdiff_max_iou,
       round(p.pdiff_pairwise_iou, 3) AS pdiff_pairwise_iou, p.pdiff_distinct_sets,
       round(p.pdiff_spread_ratio, 3) AS pdiff_spread_ratio, p.pdiff_collapsed, p.ae_converged,
       p.collapsed_trials, p.pdiff_verdict, p.memorising_trials, p.tied_trials""" + "".join(
    f""",
       p.vs_{r}, round(p.vs_{r}_acc_diff, 2) AS vs_{r}_acc_diff, round(p.vs_{r}_acc_lo, 2) AS vs_{r}_acc_lo,
       round(p.vs_{r}_acc_hi, 2) AS vs_{r}_acc_hi, round(p.vs_{r}_iou_diff, 3) AS vs_{r}_iou_diff,
       round(p.vs_{r}_iou_lo, 3) AS vs_{r}_iou_lo, round(p.vs_{r}_iou_hi, 3) AS vs_{r}_iou_hi"""
    for r in _references()) + "".join(
    f""",
       round(base_{m}.selected, 2) AS {m}_selected, round(base_{m}.mean, 2) AS {m}_mean,
       round(base_{m}.max_iou, 3) AS {m}_max_iou, round(base_{m}.pairwise_iou, 3) AS {m}_pairwise_iou"""
    for m in methods()) + """
FROM sources s
LEFT JOIN originals o USING (cell_id)
LEFT JOIN pdiff p USING (cell_id)
LEFT JOIN failed f USING (cell_id)""" + _join_baselines() + """
ORDER BY s.arch, s.dataset, s.seed"""


@lru_cache(maxsize=None)
def summary_sql() -> str:
    """One row per cell (`orchestrator.results.summary.summary`; what the sweep prints)."""
    return with_ctes(_SUMMARY_CTES, views, _PDIFF) + _summary_select() + "\n"


def report_sql(knobs: Sequence[str]) -> str:
    """summary_sql()'s row per cell, with the columns the report adds (see `orchestrator.report`): each
    baseline's test-selected best, median and collapse signals, the snapshots' collapse flag, the winning
    trial's id, val accuracy and `knobs` (as `hp_<knob>`), and whether p-diff dominates each baseline."""

    hp = "".join(f',\n       t."{k}" AS "hp_{k}"' for k in knobs)
    extra = "".join(f",\n       round(base_{m}.best_test, 2) AS {m}_best_test_paper, "
                    f"round(base_{m}.median, 2) AS {m}_median"
                    f",\n       base_{m}.distinct_sets AS {m}_distinct_sets, "
                    f"round(base_{m}.spread_ratio, 3) AS {m}_spread_ratio, base_{m}.collapsed AS {m}_collapsed"
                    for m in methods())
    # The snapshots' spread ratio is 1 by definition: their flag is the pairwise IoU's alone.
    extra += f",\n       s.snapshot_pairwise_iou >= {COLLAPSE_IOU} AS snapshot_collapsed"

    # Whether p-diff beats a baseline is the trial's stored comparison (pdiff.verdicts.comparison, from 95%
    # intervals): a difference inside its interval's noise is a tie, not a win.
    intervals = ",\n       ".join(
        f"printf('%+.2f [%+.2f, %+.2f]', vs_{r}_acc_diff, vs_{r}_acc_lo, vs_{r}_acc_hi) AS vs_{r}_acc,\n       "
        f"printf('%+.3f [%+.3f, %+.3f]', vs_{r}_iou_diff, vs_{r}_iou_lo, vs_{r}_iou_hi) AS vs_{r}_iou"
        for r in _references())
    report = f"""
SELECT s.*,
       b.trial_id AS best_trial, round(t.val_acc_pct, 2) AS pdiff_val{extra}{hp}
FROM summary s
LEFT JOIN best_trial b ON b.cell_id = s.cell_id
LEFT JOIN trials t ON t.cell_id = b.cell_id AND t.trial_id = b.trial_id{_join_baselines()}"""
    return (with_ctes(_SUMMARY_CTES, views, _PDIFF, ("summary", _summary_select()), ("report", report))
            + f"\nSELECT *,\n       {intervals}\nFROM report ORDER BY arch, dataset, seed\n")


def searched_knobs(con) -> tuple[list[str], list[str]]:
    """(knobs that take more than one value across the sweep's trials, every knob column present), in
    `pdiff.config.KNOBS`' order."""
    columns = {r[0] for r in con.execute("DESCRIBE trials").fetchall()}
    present = [k for k in KNOBS if k in columns]
    if not present:
        return [], []
    counts = con.execute("SELECT " + ", ".join(f'count(DISTINCT "{k}")' for k in present) + " FROM trials").fetchone()
    return [k for k, n in zip(present, counts) if n > 1], present


def failed_reasons_sql(has_reason: bool) -> str:
    """Per cell with failed trials: cell_id, how many, and their distinct reasons (NULL-free)."""
    reason = "reason" if has_reason else "NULL"
    return f"""SELECT cell_id, count(*), list(DISTINCT {reason}) FILTER (WHERE {reason} IS NOT NULL)
               FROM trials WHERE {FAILED} GROUP BY cell_id"""


def completed_trials_sql(columns: str = "cell_id, trial_id, val_acc_pct") -> str:
    return f"SELECT {columns} FROM trials WHERE {COMPLETED}"


def curves_sql() -> str:
    """The loss curves of one cell's listed trials (parameters: cell_id, [trial_id, ...])."""
    return ("SELECT trial_id, phase, step, loss FROM curves WHERE cell_id = ? AND "
            "list_contains(?, trial_id) ORDER BY trial_id, phase, step")


def runs_sql(limit: int) -> str:
    """The latest `limit` runs of the sweep command, newest first."""
    return f"SELECT * FROM runs ORDER BY started_at DESC LIMIT {int(limit)}"


def ablation_sql(has_iou: bool) -> str:
    """The completed trials' noise knobs, val-selected test accuracy and mean test max-IoU (`iou`)."""
    iou = "test_max_iou AS iou" if has_iou else "NULL AS iou"
    return completed_trials_sql(f"cell_id, input_noise, latent_noise, selected_acc_pct, {iou}")


def readme_questions(src: Source = views) -> list[str]:
    """The README's three questions: the best p-diff trial per (arch, dataset) beside the snapshots and the
    baselines; the top trials' hyperparameters; accuracy against novelty per family. Over the views by default
    (as the README prints them, for `orchestrator.query`); `files(root)` reads the same tables by path."""
    best = (with_ctes(("originals", "best_trial", "baseline"), src) + """
SELECT s.arch, s.dataset, avg(o.original_best) AS original_best, avg(t.selected_acc_pct) AS pdiff_selected,
       """ + ", ".join(f"avg(base_{m}.selected) AS {m}" for m in methods()) + f"""
FROM {src("sources")} s
JOIN originals o USING (cell_id)
JOIN best_trial b USING (cell_id)
JOIN {src("trials")} t ON t.cell_id = b.cell_id AND t.trial_id = b.trial_id"""
            + _join_baselines().replace("LEFT JOIN", "JOIN") + """
GROUP BY s.arch, s.dataset ORDER BY s.arch, s.dataset;
""")
    top = f"""SELECT cell_id, trial_id, val_acc_pct, selected_acc_pct, val_max_iou, test_max_iou,
       latent_dim, latent_noise, input_noise, ae_lr
FROM {src("trials")}
WHERE {COMPLETED}
ORDER BY {BEST_TRIAL_ORDER} LIMIT 5;
"""
    plane = f"""SELECT 'p-diff' AS method, 100 * avg(g.test_acc) AS mean_acc_pct,
       avg(g.test_max_iou) AS mean_test_max_iou, avg(t.pairwise_iou) AS mean_pairwise_iou
FROM {src("generated")} g
JOIN {src("trials")} t USING (cell_id, trial_id)
WHERE t.{COMPLETED}
UNION ALL
SELECT method, 100 * avg(test_acc), avg(test_max_iou), avg(family_pairwise_iou)
FROM {src("baselines")} GROUP BY method
ORDER BY method;
"""
    return [best, top, plane]
