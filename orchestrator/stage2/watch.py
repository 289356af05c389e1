"""The driver's view of stage 2: one console line per trial as its row lands in the `trials` table (trials
run in other processes, and their row is their commit marker), with its warnings."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

from orchestrator.runtime.progress import Progress
from orchestrator.store.schema import current
from orchestrator.store.tables import Store

__all__ = ["TrialWatcher"]


def _interval(row: dict, prefix: str, fmt: str) -> str:
    """`+0.12 [-0.30, +0.51]`: a stored difference and its 95% interval."""
    return (f"{format(row[prefix + '_diff'], fmt)} [{format(row[prefix + '_lo'], fmt)}, "
            f"{format(row[prefix + '_hi'], fmt)}]")


def _warnings(row: dict[str, Any]) -> list[str]:
    """What a completed trial's line warns about: collapse, an autoencoder short of its quality,
    memorisation, and how it compares with the noise baseline."""
    nan = float("nan")
    warnings = []
    if row.get("collapsed"):
        warnings.append(f"COLLAPSED: its {row.get('distinct_sets')} distinct model(s) have pairwise IoU "
                        f"{row.get('pairwise_iou', nan):.3f}, spread {row.get('spread_ratio', nan):.2f}x "
                        f"the snapshots'")
    if row.get("ae_converged") is False:
        warnings.append(f"autoencoder stopped at its bound ({row.get('ae_steps_taken')} steps) short of its "
                        f"quality: R2 {row.get('ae_r2', nan):.3f} (ae_min_r2 {row.get('ae_min_r2')}), "
                        f"fidelity {row.get('ae_fidelity', nan):.3f} "
                        f"(ae_min_fidelity {row.get('ae_min_fidelity')})")
    if row.get("verdict") == "memorising":
        warnings.append(f"MEMORISING: its models' mean max-IoU to the snapshots {row['test_max_iou']:.3f} >= "
                        f"the snapshots' own {row.get('snapshot_loo_max_iou', nan):.3f}")
    if row.get("vs_noise"):
        warnings.append(f"vs noise: {row['vs_noise']} (acc {_interval(row, 'vs_noise_acc', '+.2f')} pp, "
                        f"max-IoU {_interval(row, 'vs_noise_iou', '+.3f')})")
    return warnings


class TrialWatcher:
    """Prints each trial as its row lands in the `trials` table (trials run in other processes)."""

    def __init__(self, store: Store, progress: Progress):
        self.store, self.progress = store, progress
        self.seen = {f for f in store.files("trials")}
        self.best: dict[str, float] = {}

    def poll(self) -> None:
        for f in self.store.files("trials"):
            if f in self.seen:
                continue
            self.seen.add(f)
            rows = current("trials", pq.read_table(f, filesystem=self.store.fs)).to_pylist()
            if len(rows) == 1:  # else a tombstone (a removed trial) or a compacted file: not one trial's row
                self._say(rows[0])

    def _say(self, row: dict[str, Any]) -> None:
        cell = row["cell_id"]
        self.progress.finish(row["trial_id"])
        if row["status"] == "failed":
            self.progress.advance("trials", f"{cell}: trial {row['trial_id']} failed: {row.get('reason')}")
            return
        if row["status"] != "completed":
            self.progress.advance("trials", f"{cell}: trial {row['trial_id']} {row['status']}")
            return
        self.best[cell] = max(self.best.get(cell, float("-inf")), row["val_acc_pct"])
        self.progress.advance("trials", f"{cell}: val {row['val_acc_pct']:.2f}%, test (val-selected) "
                                        f"{row['selected_acc_pct']:.2f}%, test max IoU to snapshots "
                                        f"{row['test_max_iou']:.3f}, pairwise IoU "
                                        f"{row.get('pairwise_iou', float('nan')):.3f} "
                                        f"(best val so far {self.best[cell]:.2f}%)"
                              + "".join(f"; {w}" for w in _warnings(row)))
