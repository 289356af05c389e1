"""The report at sweep scale: one row per arch x dataset on the index page, and a page per cell.

The index page (`orchestrator.report`) holds the per-cell summary tables while the sweep has at most
`INDEX_CELLS` cells; beyond, they move to `cells.html` (linked from the index) and the index holds the
arch x dataset table (`group_summary`) alone. The arch x dataset table is shown wherever a group has more
than one cell (several seeds). Every cell has its own page, `cell-<cell_id>.html`, beside `index.html`,
linked from each cell's row: its summary row (the four tables), its similarity numbers, every trial with its
knobs, and the notes about it. The figures draw at most `orchestrator.results.canvas.MAX_PANELS` panels each
(`orchestrator.results.canvas.panels_of`). Nothing here draws: writing 400 pages takes well under a second.
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from orchestrator.console import cell_label
from orchestrator.results.captions import caption
from orchestrator.results.layout import CSS, code_html, frame_html, html_table, md_table, summary_groups
from orchestrator.results.sql import methods
from orchestrator.results.trust import collapse_warnings, is_flagged, trust_warnings

__all__ = ["CELLS_DIR", "INDEX_CELLS", "MAX_WARNINGS", "cell_figures", "cell_page", "group_summary", "groups_html", "groups_md", "tables_on_index",
           "wants_groups", "write_cell_pages"]

INDEX_CELLS = 50  # per-cell summary tables on the index page up to this many cells; beyond, on cells.html
MAX_WARNINGS = 12  # collapse warnings spelled out on the index page; the rest are counted
CELLS_DIR = "cells"  # each cell's own figures, cells/<cell_id>/<figure>.png, beside index.html
NOT_DRAWN = "No figure of the report shows this cell (they show the first arch x dataset groups): its numbers are here."


def cell_page(cell_id: str) -> str:
    """The file name of a cell's page, beside index.html."""
    return f"cell-{cell_id}.html"


def cell_figures(out: Path, panels: Sequence, figures: dict[str, Path], own: dict[str, dict[str, Path]]
                 ) -> dict[str, list[tuple[str, str]]]:
    """Each cell's figures for its page, as (file relative to `out`, figure name), in the report's order: its own
    (`own`, cell id -> {figure: path}: drawn where every cell has its panel), else the report's `figures` whose
    panel pools it (the t-SNE and the loss curves show a panel's first cell only). `panels`: the figures'
    (orchestrator.results.canvas.panels_of); a cell in none has no figure."""
    found = {}
    for panel in panels:
        for i, c in enumerate(panel.cells):
            found[c] = ([(p.relative_to(out).as_posix(), name) for name, p in own[c].items()] if c in own else
                        [(name, name) for name in figures if i == 0 or name not in ("tsne.png", "loss_curves.png")])
    return found


def _figures_html(entries: Sequence[tuple[str, str]], how: str) -> list[str]:
    """A cell page's figures, each under its title and over its caption (orchestrator.results.captions)."""
    e = html.escape
    parts = ["<h2>Figures</h2>"] if entries else []
    for src, name in entries:
        title, text = caption(name, how)
        parts += ["<figure>", f"<h3>{e(title)}</h3>", f'<img src="{e(src)}" alt="{e(title)}">',
                  f"<figcaption>{code_html(text)}</figcaption>", "</figure>"]
    return parts


def wants_groups(df: pd.DataFrame) -> bool:
    """Whether the index shows the arch x dataset table: some group has several cells, or the per-cell tables
    are not on the index."""
    return not tables_on_index(df) or bool(len(df) and df.groupby(["arch", "dataset"]).size().max() > 1)


def tables_on_index(df: pd.DataFrame) -> bool:
    """Whether the index page holds the per-cell summary tables (at most INDEX_CELLS cells; beyond, cells.html
    does)."""
    return len(df) <= INDEX_CELLS


def _methods() -> list[str]:

    return list(methods())


def group_summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per arch x dataset of the report's per-cell summary (`orchestrator.results.sql.report_sql`): cells,
    mean and standard deviation over them of the val-selected test accuracies (p-diff, the snapshots' best,
    each baseline) and mean novelty (test max-IoU), collapsed cells, and in how many cells p-diff dominates
    each baseline on the selected accuracy."""
    rows = []
    for (arch, dataset), g in df.groupby(["arch", "dataset"], sort=True):
        row = {"arch": arch, "dataset": dataset, "cells": len(g),
               "trials": int(pd.to_numeric(g.trials, errors="coerce").fillna(0).sum()),
               "failed": int(pd.to_numeric(g.failed_trials, errors="coerce").fillna(0).sum())}

        def stat(column: str, digits: int = 2) -> str:
            values = pd.to_numeric(g[column], errors="coerce").dropna() if column in g else pd.Series(dtype=float)
            if values.empty:
                return "n/a"
            sd = f" ± {values.std():.{digits}f}" if len(values) > 1 else ""
            return f"{values.mean():.{digits}f}{sd}"

        row["orig best"] = stat("original_best")
        row["pdiff sel"] = stat("pdiff_selected")
        row["pdiff best*"] = stat("pdiff_best_test_paper")
        row["pdiff IoU"] = stat("pdiff_max_iou", 3)
        collapsed = g.pdiff_collapsed.map(is_flagged) if "pdiff_collapsed" in g else []
        row["pdiff collapsed"] = f"{int(sum(collapsed))} of {len(g)}"
        for m in _methods():
            row[f"{m} sel"] = stat(f"{m}_selected")
            row[f"{m} IoU"] = stat(f"{m}_max_iou", 3)
            versus = g.get(f"vs_{m}")
            row[f"beats {m}"] = (f"{int(versus.isin(BEATS).sum())} of {int(versus.notna().sum())}"
                                 if versus is not None else "n/a")
        rows.append(row)
    return pd.DataFrame(rows)


BEATS = ("dominates", "more novel")  # pdiff.verdicts.comparison's words for "more novel, not less accurate"
GROUP_NOTE = ("One row per architecture x dataset: the mean ± standard deviation over its cells (seeds) of each "
              "cell's number in the tables below (sel: test accuracy % of the val-selected model; best*: "
              "selected on the test set, the paper's protocol; IoU: mean test max-IoU to the snapshots, lower = "
              "more novel); collapsed: cells whose val-selected trial collapsed; beats: cells where p-diff is "
              "more novel than the baseline at equal or better mean accuracy, by 95% intervals.")


def groups_html(df: pd.DataFrame, cells_link: str | None = None) -> str:
    e = html.escape
    more = (f' Every cell: <a href="{e(cells_link)}">the per-cell tables</a>, each row linking to the cell\'s page.'
            if cells_link else "")
    return (f"<h3>By architecture x dataset</h3>\n<p class=\"note\">{e(GROUP_NOTE)}{more}</p>\n"
            f'<div class="scroll">{frame_html(group_summary(df))}</div>')


def groups_md(df: pd.DataFrame) -> str:
    return "\n".join(["## By architecture x dataset", "", GROUP_NOTE, "", md_table(group_summary(df)), ""])


def _page(title: str, body: list[str], css: str) -> str:
    e = html.escape
    return "\n".join(["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
                      f"<title>{e(title)}</title>", f"<style>{css}</style>", "</head>", "<body>", *body,
                      "</body>", "</html>"]) + "\n"


TRIAL_COLUMNS = ["trial_id", "status", "val_acc_pct", "selected_acc_pct", "best_test_acc_pct", "mean_acc_pct",
                 "median_acc_pct", "test_max_iou", "val_max_iou", "pairwise_iou", "distinct_sets", "spread_ratio",
                 "collapsed", "ae_converged", "seconds", "reason"]


def _trials_table(trials: pd.DataFrame, knobs: Sequence[str], best: str | None) -> str:
    e = html.escape
    columns = [c for c in TRIAL_COLUMNS if c in trials] + [k for k in knobs if k in trials]
    rows = trials.sort_values(["val_acc_pct", "trial_id"], ascending=[False, True], na_position="last")
    head = "".join(f"<th>{e(c)}</th>" for c in columns)

    def fmt(c: str, v) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return ""
        if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):
            v = v.tolist()
        if isinstance(v, float):
            return f"{v:.4g}" if c in knobs else f"{v:.3f}" if "iou" in c or "ratio" in c else f"{v:.2f}"
        return " ".join(str(v).split())[:160]

    body = []
    for r in rows.to_dict("records"):
        cls = ' class="best"' if r.get("trial_id") == best else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{e(fmt(c, r.get(c)))}</td>" for c in columns) + "</tr>")
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n' + "\n".join(body)
            + "\n</tbody>\n</table></div>")


def write_cell_pages(out: Path, store, df: pd.DataFrame, shown: Sequence[str], trials: pd.DataFrame,
                     cells: Sequence, notes: Sequence[str], knobs: Sequence[str], where: dict[str, str],
                     figures: dict[str, list[tuple[str, str]]] | None = None, how: str = "") -> list[str]:
    """Write `cell-<cell_id>.html` for every cell of `df` into `out`; returns their file names.

    `trials`: every trials row (any columns); `cells`: the figures' CellData (similarity numbers); `notes`: the
    report's notes (those naming a cell's label go on its page); `where`: cell id -> which figures show it;
    `figures`: cell id -> its figures (`cell_figures`); `how`: how the search history ordered the trials."""

    e = html.escape
    by_cell = {c: g for c, g in trials.groupby("cell_id", sort=False)} if len(trials) else {}
    data = {c.cell_id: c for c in cells}
    names = []
    css = CSS + "tr.best td { background: #fff6d6; }\n"
    for i in range(len(df)):
        row = df.iloc[i:i + 1]
        r = row.iloc[0]
        label = cell_label(r.arch, r.dataset, r.seed)
        body = [f'<p class="meta"><a href="index.html">Report of sweep {e(store.sweep)}</a></p>',
                f"<h1>{e(label)}</h1>", f'<p class="meta">Cell <code>{e(r.cell_id)}</code>. '
                f"{e(where.get(r.cell_id, NOT_DRAWN))}</p>"]
        body += [f'<p class="warning"><b>COLLAPSED</b>: {e(w)}</p>' for w in collapse_warnings(row)]
        body += [f'<p class="warning">{e(w)}</p>' for w in trust_warnings(row)]
        for title, note, groups in summary_groups(shown):
            body += [f"<h3>{e(title)}</h3>", f'<div class="scroll">{html_table(row, groups)}</div>']
        cell = data.get(r.cell_id)
        if cell is not None and cell.similarity:
            sim = ", ".join(f"{k} {v:.3f}" for k, v in cell.similarity.items() if not math.isnan(v))
            body += ["<h3>Similarity of wrong predictions</h3>",
                     f'<p class="note">Mean IoU of the test wrong-prediction sets: {e(sim)}.</p>']
        elif cell is not None and cell.why_not:
            body.append(f'<p class="note">{e(cell.why_not)}</p>')
        body += _figures_html((figures or {}).get(r.cell_id, []), how)
        t = by_cell.get(r.cell_id, pd.DataFrame())
        body += [f"<h3>Trials ({len(t)})</h3>",
                 '<p class="note">Best val accuracy first; the val-selected trial highlighted. Accuracies in %.</p>',
                 _trials_table(t, knobs, r.best_trial if isinstance(r.best_trial, str) else None) if len(t) else
                 '<p class="note">no trials yet</p>']
        mine = [n for n in notes if n.startswith(label + ":")]
        if mine:
            body += ["<h3>Notes</h3>", "<ul>"] + [f"<li>{e(n)}</li>" for n in mine] + ["</ul>"]
        name = cell_page(r.cell_id)
        (out / name).write_text(_page(f"p-diff sweep {store.sweep}: {label}", body, css))
        names.append(name)
    return names


def write_cells_page(out: Path, store, df: pd.DataFrame, shown: Sequence[str], links: dict[str, str]) -> str:
    """`cells.html`: the four per-cell summary tables of a sweep too large for the index page."""

    e = html.escape
    body = [f'<p class="meta"><a href="index.html">Report of sweep {e(store.sweep)}</a></p>',
            f"<h1>Every cell of sweep <code>{e(store.sweep)}</code> ({len(df)})</h1>"]
    for title, note, groups in summary_groups(shown):
        body += [f"<h3>{e(title)}</h3>", f'<p class="note">{e(note)}</p>',
                 f'<div class="scroll">{html_table(df, groups, links)}</div>']
    (out / "cells.html").write_text(_page(f"p-diff sweep {store.sweep}: every cell", body, CSS))
    return "cells.html"
