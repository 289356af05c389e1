"""What the Pareto-front figure draws (`orchestrator.results.novelty_figures.pareto_figure`), for a sweep searched on
two objectives (accuracy and novelty): every completed trial of a cell in the plane of the two (val max-IoU to the
snapshots, lower is better; val accuracy, higher is better), which trials no other one beats on both, and the
snapshots and baselines as reference points.

Which cells were searched on two objectives: no table stores the spec's objective, so it is read from the first
line of the cell's Optuna journal (`orchestrator.store.paths.journal`: the study's creation, its `directions`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import pandas as pd

from orchestrator.results.figure_data import CellData
from orchestrator.results.sql import methods
from orchestrator.store import paths
from orchestrator.store.tables import Store

__all__ = ["VAL_ACC", "Front", "fronts", "objectives", "pareto_front"]

VAL_ACC = "val_acc_pct"  # trials: the val accuracy (%) of the trial's best generated model, the selection's


def objectives(store: Store, cell_ids: Iterable[str]) -> dict[str, int]:
    """How many objectives each cell's search had, from its Optuna journal's first line; a cell without a
    readable journal (no search yet, or tables copied without `optuna/`) is left out."""
    found = {}
    for cell in cell_ids:
        try:
            with store.fs.open_input_stream(store.path(paths.journal(cell))) as f:
                first = f.read(1 << 16).split(b"\n", 1)[0]
            found[cell] = len(json.loads(first)["directions"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def pareto_front(x, y) -> np.ndarray:
    """Which points no other point dominates, minimising x and maximising y: another point dominates one where
    its x is <= and its y >=, one of them strictly. Identical points are all on the front; NaN points never."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    known = ~(np.isnan(x) | np.isnan(y))
    xi, xj, yi, yj = x[:, None], x[None, :], y[:, None], y[None, :]  # [i, j]: does j dominate i?
    dominated = ((xj <= xi) & (yj >= yi) & ((xj < xi) | (yj > yi)) & known[None, :]).any(axis=1)
    return known & ~dominated


@dataclass
class Front:
    """One cell's trials in the plane of its two objectives, and the reference points."""

    cell_id: str
    trials: pd.DataFrame  # trial_id, val_max_iou, val accuracy (VAL_ACC), on_front, selected
    # (family, its models' mean val max-IoU to the snapshots, the val accuracy % of its best model on val)
    references: list[tuple[str, float, float]] = field(default_factory=list)


def fronts(trials: pd.DataFrame, cells: Iterable[CellData]) -> dict[str, Front]:
    """Each cell's Front from the trials table (completed trials with both values) and its CellData.

    The reference points are the same statistics as a trial's: the family's best val accuracy (a trial's
    VAL_ACC is its best generated model's) and its models' mean val max-IoU (a trial's val_max_iou is that
    mean); for the snapshots, their leave-one-out val max-IoU (sources.snapshot_loo_val_max_iou)."""
    done = trials[trials.status == "completed"] if len(trials) else trials
    out = {}
    for cell in cells:
        t = done[done.cell_id == cell.cell_id] if len(done) else pd.DataFrame(columns=["trial_id"])
        t = t.reindex(columns=["trial_id", "val_max_iou", VAL_ACC]).dropna().reset_index(drop=True)
        t["on_front"] = pareto_front(t.val_max_iou, t[VAL_ACC])
        t["selected"] = t.trial_id == cell.best_trial
        front = Front(cell.cell_id, t)
        snaps = cell.snapshot_rows
        if cell.snapshot_loo_val is not None and len(snaps) and "val_acc" in snaps:
            front.references.append(("original", cell.snapshot_loo_val, 100 * float(snaps.val_acc.max())))
        b = cell.baselines
        for method in methods() if {"val_acc", "val_max_iou"} <= set(b.columns) else ():
            rows = b[b.method == method]
            if len(rows) and rows.val_max_iou.notna().any():
                front.references.append((method, float(rows.val_max_iou.mean()), 100 * float(rows.val_acc.max())))
        out[cell.cell_id] = front
    return out
