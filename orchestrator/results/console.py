"""The per-cell summary as console text, for a terminal: `sweep_text` is what the sweep prints at its end
(`orchestrator.sweep`), `summary_text` what the report command prints after writing the report
(`orchestrator.report`). Their warning lines are `orchestrator.results.trust`'s."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from orchestrator.results.layout import count_of, flat_table, summary_groups
from orchestrator.results.trust import is_flagged, is_known, report_warnings, sweep_warnings
from pdiff.names import COLLAPSE_IOU, COLLAPSE_SPREAD

__all__ = ["summary_text", "sweep_text"]

# The sweep's collapse table: column -> short heading (the accuracy table shows the other columns by name).
SWEEP_COLLAPSE = {
    "snapshot_pairwise_iou": "snap_pair_iou", "pdiff_pairwise_iou": "pdiff_pair_iou",
    "pdiff_max_iou": "pdiff_max_iou", "pdiff_distinct_sets": "distinct_sets",
    "pdiff_spread_ratio": "spread_ratio", "collapse": "collapse", "ae_converged": "ae_converged",
    "collapsed_trials": "collapsed_trials", "noise_pairwise_iou": "noise_pair_iou",
    "average_pairwise_iou": "avg16_pair_iou", "gaussian_pairwise_iou": "gauss_pair_iou",
    "collection": "collection", "snapshot_loo_max_iou": "snap_loo_iou", "pdiff_verdict": "verdict",
    "vs_noise": "vs_noise", "vs_latent_gaussian": "vs_latent_gauss"}
# Columns in neither of the sweep's tables (the warnings under them say what matters of these).
SWEEP_LEFT_OUT = ("cell_id", "snapshot_distinct_sets", "pdiff_collapsed", "collection_reason", "memorising_trials",
                  "tied_trials")
COLLAPSE_NOTE = (f"collapse (pairwise IoU: mean IoU of the test wrong-prediction sets inside a family, 1 = all "
                 f"alike; max_iou: novelty, mean test_max_iou to the snapshots; spread_ratio: L2 spread over the "
                 f"snapshots'; COLLAPSED: pairwise IoU >= {COLLAPSE_IOU} or spread ratio < {COLLAPSE_SPREAD})")
KEYS = ["arch", "dataset", "seed"]


def _wide():
    """Every column, on lines up to 250 characters."""
    return pd.option_context("display.max_columns", None, "display.width", 250)


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
    with _wide():
        parts = [view[accuracy].to_string(index=False, na_rep="n/a"), "\n" + COLLAPSE_NOTE,
                 view[KEYS + list(collapse)].rename(columns=collapse).to_string(
                     index=False, na_rep="n/a", float_format=lambda x: f"{x:.3f}")]
    return "\n".join(parts + sweep_warnings(table))


def summary_text(df: pd.DataFrame, shown: Sequence[str]) -> str:
    """The report's summary (`orchestrator.results.report.summary_table`): its four tables as plain text, after
    any warning."""
    warnings = report_warnings(df)
    parts = ["\n".join(warnings)] if warnings else []
    with _wide():
        for title, note, groups in summary_groups(shown):
            flat = flat_table(df, groups)
            parts.append(f"{title}\n{flat.to_string(index=False)}")
            if title.startswith("Test accuracy"):
                parts[-1] += "\n(sel: val-selected model; best*: selected on the test set, the paper's protocol)"
    return "\n\n".join(parts)
