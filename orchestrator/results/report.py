"""Write a sweep's report folder: the summary tables, figures, cell pages and their HTML / Markdown pages,
built in a scratch folder and swapped in whole (the command and what the summary holds:
`orchestrator.report`)."""

from __future__ import annotations

import contextlib
import html
import json
import os
import secrets
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.console import cell_label
from orchestrator.results import canvas
from orchestrator.results.canvas import panels_of
from orchestrator.results.captions import caption
from orchestrator.results.figures import draw_all
from orchestrator.results.layout import CSS, code_html, flat_table, format_value, html_table, md_table, summary_groups
from orchestrator.results.pages import (CELLS_DIR, MAX_WARNINGS, cell_figures, cell_page, groups_html, groups_md, tables_on_index, wants_groups,
                                        write_cell_pages, write_cells_page)
from orchestrator.results.sections import feedback_sections
from orchestrator.results.sql import failed_reasons_sql, report_sql, searched_knobs
from orchestrator.results.table1 import table1_html, table1_md
from orchestrator.results.trust import collapse_warnings, report_warnings, trust_warnings
from orchestrator.results.views import connect, materialize, one_line
from orchestrator.store import paths
from orchestrator.store.schema import RENAMED, TABLES
from orchestrator.store.tables import Store

# -- the summary table -------------------------------------------------------


def summary_table(store: Store, con=None) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The report's summary (one row per cell), the searched knobs, and the knobs shown in it."""
    con = con or connect(store)
    searched, present = searched_knobs(con)
    shown = searched or present
    return con.execute(report_sql(shown)).df(), searched, shown


def _html(store: Store, df: pd.DataFrame, shown, figures: dict[str, Path], how: str, counts: dict[str, int],
          notes: list[str], extra=None, links: dict[str, str] | None = None) -> str:
    e = html.escape
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>p-diff sweep {e(store.sweep)}: report</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>p-diff sweep <code>{e(store.sweep)}</code></h1>",
        f'<p class="meta">Tables: <code>{e(store.uri)}</code>. {len(df)} cell(s); rows: '
        + ", ".join(f"{e(t)} {n}" for t, n in counts.items()) + f". Written {stamp}.</p>",
        "<h2>Summary</h2>",
        f'<p class="meta"><a href="{TABLE1}.html">Table 1</a>: the paper\'s layout, one row per architecture x '
        "dataset (original and p-diff, mean and best, the baselines, 95% intervals, novelty).</p>",
    ]
    warnings = report_warnings(df)
    parts += [f'<p class="warning">{e(w)}</p>' for w in warnings[:MAX_WARNINGS]]
    if len(warnings) > MAX_WARNINGS:
        parts.append(f'<p class="warning">and {len(warnings) - MAX_WARNINGS} more warnings (the cells\' '
                     f"pages, and the Collapse and Novelty tables, say which)</p>")
    on_index = tables_on_index(df)
    if wants_groups(df):  # one row per arch x dataset (orchestrator.results.pages)
        parts.append(groups_html(df, None if on_index else "cells.html"))
    for title, note, groups in summary_groups(shown) if on_index else ():
        parts += [f"<h3>{e(title)}</h3>", f'<p class="note">{e(note)}</p>',
                  f'<div class="scroll">{html_table(df, groups, links)}</div>']
    if extra and extra.results_html:  # orchestrator.results.sections: the noise ablation
        parts.append(extra.results_html)
    parts.append("<h2>Figures</h2>")
    for name in figures:
        title, text = caption(name, how)
        parts += ["<figure>", f"<h3>{e(title)}</h3>", f'<img src="{e(name)}" alt="{e(title)}">',
                  f"<figcaption>{code_html(text)}</figcaption>", "</figure>"]
    if extra and extra.runs_html:  # orchestrator.results.sections: the runs table
        parts.append(extra.runs_html)
    parts += ["<h2>Notes</h2>", "<ul>"] + [f"<li>{code_html(n)}</li>" for n in notes] + ["</ul>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _markdown(store: Store, df: pd.DataFrame, shown, figures: dict[str, Path], how: str, notes: list[str],
              extra=None) -> str:
    parts = [f"# p-diff sweep `{store.sweep}`", "", f"Tables: `{store.uri}`; {len(df)} cell(s).", "",
             f"[Table 1]({TABLE1}.md): the paper's layout, one row per architecture x dataset.", ""]
    parts += [line for w in collapse_warnings(df) for line in (f"> **COLLAPSED**: {w}", "")]
    parts += [line for w in trust_warnings(df) for line in (f"> {w}", "")]

    if wants_groups(df):
        parts += [groups_md(df)]
    for title, note, groups in summary_groups(shown):
        parts += [f"## {title}", "", note, "", md_table(flat_table(df, groups)), ""]
    if extra and extra.results_md:
        parts += [extra.results_md]
    parts += ["## Figures", ""]
    for name in figures:
        title, text = caption(name, how)
        parts += [f"### {title}", "", f"![{title}]({name})", "", text, ""]
    if extra and extra.runs_md:
        parts += [extra.runs_md]
    parts += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


# -- the report --------------------------------------------------------------


def _failed_notes(con, df: pd.DataFrame) -> list[str]:
    """A note per cell with failed trials: how many, left out of every number and figure, and why."""
    columns = {r[0] for r in con.execute("DESCRIBE trials").fetchall()}
    rows = con.execute(failed_reasons_sql("reason" in columns)).fetchall()
    labels = {r.cell_id: cell_label(r.arch, r.dataset, r.seed) for r in df.itertuples()}
    notes = []
    for cell_id, n, reasons in sorted(rows, key=lambda r: labels.get(r[0], r[0])):
        why = "; ".join(sorted(" ".join(str(x).split())[:160] for x in reasons or [])[:3])
        notes.append(f"{labels.get(cell_id, cell_id)}: {n} failed trial(s), left out of the summary and the "
                     f"figures" + (f" (reason: {why})" if why else ""))
    return notes


def _write_pages(store: Store, con, out: Path, df: pd.DataFrame, shown, cells, notes, panels,
                 figures: dict[str, list[tuple[str, str]]], how: str) -> dict[str, str]:
    """A page per cell (orchestrator.results.pages), and cells.html where the index has no per-cell tables; returns
    {cell id: its page}."""

    where = {}
    for p in panels:
        for i, c in enumerate(p.cells):
            where[c] = ("Every figure of the report shows this cell." if len(p.cells) == 1 else
                        f"The report's figures pool it in the panel {p.label}"
                        + ("; the t-SNE and the loss curves show it." if i == 0 else "."))
    trials = con.execute("SELECT * FROM trials").df()
    write_cell_pages(out, store, df, shown, trials, cells, notes, [c[3:] for c in df.columns if c.startswith("hp_")],
                     where, figures, how)
    links = {c: cell_page(c) for c in df.cell_id}
    if not tables_on_index(df):
        write_cells_page(out, store, df, shown, links)
    return links


TABLE1 = "table1"  # the paper's Table 1 (orchestrator.results.table1): table1.html and table1.md
REPORT_MARKER = "_report.json"  # {"tool", "report": the sweep's name, "tables"}: a folder a new report may replace


class Refused(ValueError):
    """A one-line reason to stop with exit status 2 (a report folder that is not ours, a mistyped column)."""


def _check_types(store: Store) -> None:
    """Refuse a table whose files disagree with its declared column types (`tables.TABLES`) or with each other,
    in one line naming the table, the column and the file, before a query fails deep in the summary."""
    for table, declared in TABLES.items():
        schemas = {}
        for f in store.files(table):
            try:
                schemas[f] = pq.read_schema(f, filesystem=store.fs).remove_metadata()
            except (pa.ArrowException, OSError):
                continue  # an unreadable file: `connect` names it (CorruptTable)
        for f, schema in schemas.items():
            for field in schema:
                name = RENAMED.get(table, {}).get(field.name, field.name)  # an older sweep's name of the column
                want = declared.field(name).type if name in declared.names else None
                if want is not None and field.type != want and not pa.types.is_null(field.type):
                    raise Refused(f"column {table}.{field.name} is {field.type} in {f}, declared {want}: rewrite "
                                  f"or remove that file (columns are never retyped)")
        try:  # the undeclared columns (the trials' knobs): one type across the files, as in Store.read
            if schemas:
                pa.unify_schemas(list(schemas.values()), promote_options="permissive")
        except (pa.ArrowException, ValueError) as err:
            raise Refused(f"table {table} of {store.uri}: {one_line(err)}") from None


def _is_report_of(folder: Path, store: Store) -> bool:
    try:
        mark = json.loads((folder / REPORT_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(mark, dict) and mark.get("tool") == "pdiff-sweep" and mark.get("report") == store.sweep


def _target(store: Store, out_dir: str | Path | None) -> Path:
    """The report folder, checked before anything is written: a new or empty folder, the sweep's own
    `report/`, or an earlier report of this sweep (its REPORT_MARKER); never a link, a file, or elsewhere
    inside the sweep's folder (a reader does not write among the tables)."""
    own = Path(store.path(paths.REPORT))
    if out_dir is not None and not str(out_dir).strip():
        raise Refused("--out '': give a folder")
    try:
        out = own if out_dir is None else Path(os.path.abspath(Path(out_dir).expanduser()))
        real, sweep = os.path.realpath(out), os.path.realpath(store.root)
        if out.is_symlink():
            raise Refused(f"--out {out}: a link; give the folder itself")
        if out.exists() and not out.is_dir():
            raise Refused(f"--out {out}: not a folder")
        if out != own and (real == sweep or real.startswith(sweep + os.sep)) and real != os.path.realpath(own):
            raise Refused(f"--out {out}: inside the sweep's folder {store.root}; leave out --out for "
                          f"{own}, or give a folder outside the sweep")
        if out != own and out.is_dir() and any(out.iterdir()) and not _is_report_of(out, store):
            raise Refused(f"--out {out}: a folder holding files that is not a report of sweep {store.sweep} (no "
                          f"{REPORT_MARKER} naming it); give a new or empty folder")
        ancestor = next(p for p in out.parents if p.exists())
        if not ancestor.is_dir():
            raise Refused(f"--out {out}: {ancestor} is not a folder")
    except (OSError, ValueError) as err:  # an unreadable folder, a name too long, a NUL byte
        if isinstance(err, Refused):
            raise
        raise Refused(f"--out {out_dir}: {one_line(err)}") from None
    return out


def _scratch(target: Path) -> tuple[Path, list[Path]]:
    """A new folder beside `target` to write the report into, and the missing parent folders made for it;
    nothing is left behind when it cannot be made."""
    created: list[Path] = []
    try:
        for parent in reversed([p for p in target.parents if not p.exists()]):
            parent.mkdir()
            created.append(parent)
        scratch = target.with_name(f".{target.name}.tmp-{secrets.token_hex(4)}")
        scratch.mkdir()
    except OSError as err:
        _remove(created)
        raise Refused(f"--out {target}: cannot write there ({err.strerror or err})") from None
    return scratch, created


def _remove(folders: list[Path]) -> None:
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


def _swap(scratch: Path, target: Path) -> None:
    """Put the finished report in place of the earlier one (if any), which is removed."""
    old = scratch.with_name(scratch.name.replace(".tmp-", ".old-"))
    had = target.exists()
    if had:
        target.rename(old)
    try:
        scratch.rename(target)
    except OSError:
        if had:
            old.rename(target)
        raise
    if had:
        shutil.rmtree(old, ignore_errors=True)


def write_report(store: Store, out_dir: str | Path | None = None, *,
                 log: Callable[[str], None] | None = None) -> Path:
    """Write the report folder of a sweep and return the path of its `index.html`.

    `out_dir` defaults to `<sweep>/report/`. The report is written into a new folder beside it and renamed into
    place once complete, so no half-written report is ever there; for a sweep on an object store it is built in
    a local temporary folder (whose index.html is returned) and copied to `<sweep>/report/`. Raises Refused (one line) for an `out_dir` that
    is not a report folder of this sweep (`_target`) or tables whose columns are mistyped.
    """
    log = log or (lambda s: None)
    upload = out_dir is None and not store.is_local
    target = None if upload else _target(store, out_dir)
    _check_types(store)
    t0 = time.perf_counter()
    con, df, searched, shown, counts = _summarise(store, log)
    out, created = (Path(tempfile.mkdtemp(prefix=f"report-{store.sweep}-")), []) if upload else _scratch(target)
    try:
        (out / REPORT_MARKER).write_text(json.dumps({"tool": "pdiff-sweep", "report": store.sweep,
                                                     "tables": store.uri}) + "\n")
        _write_files(store, con, out, df, searched, shown, counts, log)
        if upload:
            for f in sorted(f for f in out.rglob("*") if f.is_file()):  # each cell's figures in CELLS_DIR
                store.write_bytes(f"{paths.REPORT}/{f.relative_to(out).as_posix()}", f.read_bytes())
            log(f"copied to {store.uri}/{paths.REPORT}/")
        else:
            _swap(out, target)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        _remove(created)
        raise
    log(f"report written in {time.perf_counter() - t0:.1f}s")
    return out / "index.html" if upload else target / "index.html"


def _summarise(store: Store, log: Callable[[str], None]):
    """The tables read once: (connection, summary, searched knobs, knobs shown, rows per table)."""
    t0 = time.perf_counter()
    con = connect(store)
    materialize(con)  # the light columns, read once for the report's many queries
    df, searched, shown = summary_table(store, con)
    counts = {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    log(f"summary of {len(df)} cell(s) ({time.perf_counter() - t0:.1f}s)")
    return con, df, searched, shown, counts


def _write_files(store: Store, con, out: Path, df: pd.DataFrame, searched, shown, counts: dict[str, int],
                 log: Callable[[str], None]) -> None:
    """The report's files (figures, summary.csv and .md, Table 1, the pages, index.html) into `out`."""

    best = {r.cell_id: (r.best_trial if isinstance(r.best_trial, str) else None) for r in df.itertuples()}
    panels, pooled = panels_of(df[["cell_id", "arch", "dataset", "seed"]])
    # A panel per cell (not pooled): each panel is also cut out as the cell's own figure, for its page.
    with canvas.cropping([] if pooled else [p.key for p in panels], out / CELLS_DIR) as own:
        figures, how, cells = draw_all(store, out, best, searched, log=log)
        # loss curves, the noise ablation, the runs; the loss curves of one cell per panel
        extra = feedback_sections(store, con, df, out, log, shown=[p.cells[0] for p in panels])
    figures = figures | extra.figures

    notes = [
        "All numbers are one DuckDB query over the Parquet tables (`orchestrator.results.sql.report_sql`); ask your "
        "own with `python -m orchestrator.query " + store.uri + " \"SELECT ...\"` (views: "
        + ", ".join(f"`{t}`" for t in TABLES) + ").",
        "Accuracies are percentages of the test split; the search never sees the test split.",
        f"Search history order: {how}.",
    ]
    if pooled:
        notes.append(f"Figures: {pooled}; the t-SNE and the loss curves show the first cell (seed) of each. "
                     f"Each cell's numbers and trials are on its own page (linked from its row).")
    notes += [f"{c.label}: {c.why_not}" for c in cells if c.why_not]
    notes += _failed_notes(con, df)
    for c in cells:  # the stored wrong-prediction sets must reproduce the stored accuracies
        groups = [("original", c.snapshot_rows.test_acc), ("p-diff", c.best_generated.test_acc)]
        groups += [(m, rows.sort_values("index").test_acc) for m, rows in c.baselines.groupby("method")]
        for group, stored in groups:
            if group in c.recomputed and len(stored) == len(c.recomputed[group]):
                gap = float(abs(c.recomputed[group] - stored.to_numpy()).max()) if len(stored) else 0.0
                if gap > 1e-6:
                    notes.append(f"{c.label}: {group} test accuracy from the stored wrong-prediction sets differs "
                                 f"from the stored test_acc by up to {100 * gap:.2f} points (the figures use the sets)")
    listy = [c for c in df.columns if df[c].map(lambda v: hasattr(v, "__len__") and not isinstance(v, str)).any()]
    df.assign(**{c: df[c].map(lambda v: format_value(c, v)) for c in listy}).to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(_markdown(store, df, shown, figures, how, notes, extra))
    (out / f"{TABLE1}.html").write_text(table1_html(df, store.sweep))
    (out / f"{TABLE1}.md").write_text(table1_md(df, store.sweep))
    links = _write_pages(store, con, out, df, shown, cells, notes, panels, cell_figures(out, panels, figures, own), how)
    (out / "index.html").write_text(_html(store, df, shown, figures, how, counts, notes, extra, links))
    log(f"{len(links)} cell page(s)")
