"""The per-cell summary as console text, for a terminal: `sweep_text` is what the sweep prints at its end
(`orchestrator.sweep`), `summary_text` what the report command prints after writing the report
(`orchestrator.report`). Their warning lines are `orchestrator.results.trust`'s. Every line is at most `WIDTH`
characters: a table wider than that is printed as several, each starting with the cell's keys (`fit`)."""

from __future__ import annotations

import itertools
import textwrap
from typing import Sequence

import pandas as pd

from orchestrator.results.layout import count_of, flat_table, format_value, summary_groups
from orchestrator.results.trust import is_flagged, is_known, report_warnings, sweep_warnings
from pdiff.names import COLLAPSE_IOU, COLLAPSE_SPREAD

__all__ = ["WIDTH", "fit", "summary_text", "sweep_text", "wrap"]

WIDTH = 120  # the longest console line of a summary (a terminal's width, and readable in a log)
KEYS = ["arch", "dataset", "seed"]
GAP = "  "  # between two columns

# The sweep's collapse table: column -> short heading (the accuracy table shows the other columns by name). The
# first eight stay side by side: does p-diff's val-selected trial generate or copy one model?
SWEEP_COLLAPSE = {
    "snapshot_pairwise_iou": "snap_pair_iou", "pdiff_pairwise_iou": "pdiff_pair_iou",
    "pdiff_max_iou": "pdiff_max_iou", "pdiff_distinct_sets": "sets",
    "pdiff_spread_ratio": "spread", "collapse": "collapse", "ae_converged": "ae_ok",
    "collapsed_trials": "collapsed_trials", "noise_pairwise_iou": "noise_pair_iou",
    "average_pairwise_iou": "avg16_pair_iou", "gaussian_pairwise_iou": "gauss_pair_iou",
    "collection": "collection", "snapshot_loo_max_iou": "snap_loo_iou", "pdiff_verdict": "verdict",
    "vs_noise": "vs_noise", "vs_latent_gaussian": "vs_latent_gauss"}
# Columns in neither of the sweep's tables (the warnings under them say what matters of these).
SWEEP_LEFT_OUT = ("cell_id", "snapshot_distinct_sets", "pdiff_collapsed", "collection_reason", "memorising_trials",
                  "tied_trials")
COLLAPSE_NOTE = (f"collapse (pairwise IoU: mean IoU of the test wrong-prediction sets inside a family, 1 = all "
                 f"alike; max_iou: novelty, mean test_max_iou to the snapshots; sets: distinct wrong-prediction "
                 f"sets of the generated models; spread: their L2 spread over the snapshots'; COLLAPSED: pairwise "
                 f"IoU >= {COLLAPSE_IOU} or spread < {COLLAPSE_SPREAD}; ae_ok: the autoencoder reached ae_min_r2; "
                 f"collapsed_trials: completed trials that collapsed)")
COUNTS = ("seed", "trials", "failed_trials")  # whole numbers, whatever their column's type


def wrap(text: str, indent: str = "  ") -> str:
    """`text` on lines of at most WIDTH characters (but an unbreakable word), the later ones indented."""
    return "\n".join(textwrap.wrap(text, WIDTH, subsequent_indent=indent, break_long_words=False,
                                   break_on_hyphens=False)) or text


def fit(flat: pd.DataFrame, groups: Sequence[Sequence[str]] = (), keys: Sequence[str] = KEYS,
        width: int = WIDTH) -> list[str]:
    """`flat`'s columns (strings) as text tables whose lines are at most `width` characters, each table starting
    with the `keys` columns (left-aligned; the others right-aligned). The columns go in order, a group of them
    (`groups`: lists of columns; a column in none is a group of its own) into one table where it fits."""
    keys = [k for k in keys if k in flat]
    grouped = {c: i for i, g in enumerate(groups) for c in g}
    rest = [c for c in flat.columns if c not in keys]
    widths = {c: max([len(str(c))] + [len(str(v)) for v in flat[c]]) for c in flat.columns}

    def wide(columns: list[str]) -> int:
        return sum(widths[c] for c in keys + columns) + len(GAP) * (len(keys) + len(columns) - 1)

    tables: list[list[str]] = [[]]
    for _, run in itertools.groupby(rest, key=lambda c: grouped.get(c, c)):
        run = list(run)
        if tables[-1] and wide(tables[-1] + run) > width:
            tables.append([])
        for c in run:  # a group too wide for a table of its own is split
            if tables[-1] and wide(tables[-1] + [c]) > width:
                tables.append([])
            tables[-1].append(c)

    def line(values: dict, columns: list[str]) -> str:
        return GAP.join([str(values[k]).ljust(widths[k]) for k in keys]
                        + [str(values[c]).rjust(widths[c]) for c in columns]).rstrip()

    rows = [{c: c for c in flat.columns}] + flat.to_dict("records")  # the heading, then the rows
    return ["\n".join(line(r, columns) for r in rows) for columns in tables]


def _text(column: str, v) -> str:
    if isinstance(v, str):
        return v
    if column in COUNTS and is_known(v):
        return f"{v:.0f}"
    return format_value(column, v)


def sweep_text(table: pd.DataFrame) -> str:
    """The sweep's summary (`orchestrator.results.summary.summary`'s rows): accuracy (and novelty) per method
    under the columns' own names, then collapse (does p-diff generate or copy one model?), then the warnings."""
    view = table.assign(
        collapse=table.pdiff_collapsed.map(lambda v: "COLLAPSED" if is_flagged(v) else "-" if is_known(v) else "n/a"),
        ae_converged=table.ae_converged.map(lambda v: "yes" if is_flagged(v) else "NO" if is_known(v) else "n/a"),
        collapsed_trials=[count_of(c, n) for c, n in zip(table.collapsed_trials, table.trials)])
    accuracy = [c for c in table.columns if c == "pdiff_max_iou" or c not in SWEEP_COLLAPSE
                and c not in SWEEP_LEFT_OUT and not c.startswith("vs_")]
    collapse = {c: h for c, h in SWEEP_COLLAPSE.items() if c in view}
    strings = pd.DataFrame({c: [_text(c, v) for v in view[c]] for c in KEYS + accuracy + list(collapse)})
    # accuracy: a method's columns together (original_*, pdiff_*, noise_*, ...)
    by_method = [list(g) for _, g in itertools.groupby(accuracy, key=lambda c: c.split("_")[0])]
    parts = fit(strings[accuracy], by_method)
    parts += [wrap(COLLAPSE_NOTE)] + fit(strings[KEYS + list(collapse)].rename(columns=collapse),
                                         [list(collapse.values())[:8]])
    return "\n\n".join(parts + ["\n".join(wrap(w) for w in sweep_warnings(table))]).rstrip("\n")


def summary_text(df: pd.DataFrame, shown: Sequence[str]) -> str:
    """The report's summary (`orchestrator.results.report.summary_table`): its four tables as plain text, after
    any warning."""
    warnings = report_warnings(df)
    parts = ["\n".join(wrap(w) for w in warnings)] if warnings else []
    for title, note, groups in summary_groups(shown):
        flat = flat_table(df, groups)
        tables = fit(flat, [[short for c, _, short in sub if c in df] for _, sub in groups])
        parts.append(f"{title}\n" + "\n\n".join(tables))
        if title.startswith("Test accuracy"):
            parts[-1] += "\n(sel: val-selected model; best*: selected on the test set, the paper's protocol)"
    return "\n\n".join(parts)
