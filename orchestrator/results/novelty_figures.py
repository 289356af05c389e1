"""Two figures of novelty per model, drawn from `orchestrator.results.figure_data` and `front_data`:

- `max_iou.png`: per panel, the distribution of each model's test max IoU to the snapshots, per family (the
  snapshots' leave-one-out as the reference), with the collapse threshold: what the similarity figure's means
  hide (a mean IoU well below 1 between families while each generated model is a near-copy of one snapshot);
- `pareto.png`: for a sweep searched on accuracy and novelty, every completed trial in the plane of its two
  objectives, the front, the val-selected trial, the snapshots and baselines as reference points.

Titles and captions: `orchestrator.results.captions.FIGURES`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from orchestrator.results import canvas
from orchestrator.results.canvas import METHOD_STYLE, Panel
from orchestrator.results.figure_data import CellData, family_max_iou
from orchestrator.results.front_data import VAL_ACC, Front
from pdiff.names import COLLAPSE_IOU

__all__ = ["max_iou_figure", "pareto_figure"]


def _spread(n: int) -> np.ndarray:
    """Sideways offsets of n points of one family (deterministic, within +-0.25): only so they can be seen."""
    return np.zeros(n) if n < 2 else (np.arange(n) % 9 - 4) / 16.0


def max_iou_figure(panels: list[Panel], cells: dict[str, CellData], path: Path, note: str = "") -> Path:
    """`max_iou.png`: per panel, a box (quartiles, whiskers min to max) and the points of each family's max IoUs."""
    fig, axes = canvas.grid(len(panels), 5.0, 3.8)
    if not panels:
        canvas.message(axes[0], "no cells in this sweep")
    for ax, panel in zip(axes, panels):
        families = family_max_iou(cells[c] for c in panel.cells if c in cells)
        families = [(f, v) for f, v in families if len(v)]
        if not families:
            why = next((cells[c].why_not for c in panel.cells if c in cells and cells[c].why_not), None)
            canvas.message(ax, why or "no model with a max IoU in this cell", panel.label)
            continue
        lowest = min(float(v.min()) for _, v in families)
        for j, (family, values) in enumerate(families):
            label, colour, marker = METHOD_STYLE[family]
            ax.boxplot([values], positions=[j], widths=0.6, whis=(0, 100), showfliers=False,
                       medianprops={"color": colour, "lw": 2}, boxprops={"color": "#555555"})
            ax.scatter(j + _spread(len(values)), values, s=12, alpha=0.6, color=colour, marker=marker,
                       linewidths=0, zorder=3)
        snaps = dict(families).get("original")
        if snaps is not None and len(snaps):
            ax.axhline(float(snaps.mean()), color=METHOD_STYLE["original"][1], lw=0.9, ls=":",
                       label=f"snapshots' leave-one-out mean {snaps.mean():.3f}")
        ax.axhline(COLLAPSE_IOU, color="black", lw=1.0, ls="--", label=f"collapse threshold {COLLAPSE_IOU}")
        ax.set_xticks(range(len(families)), [f"{METHOD_STYLE[f][0]}\nn={len(v)}\nmean {v.mean():.3f}"
                                             for f, v in families], fontsize=6.5)  # 3 short lines: 5 families fit
        ax.set_ylim(max(0.0, min(lowest, COLLAPSE_IOU) - 0.05), 1.01)
        ax.set_ylabel("test max IoU to a snapshot")
        ax.set_title(panel.label, fontsize=10)
        ax.legend(fontsize=7, loc="lower left", framealpha=0.8)
    return _saved(fig, path, note and note + "; each panel pools its cells' models")


def _front_points(ax, front: Front, first: bool) -> None:
    """One cell's trials: all of them, the front joined, the val-selected one starred (`first`: label them)."""
    t = front.trials
    colour = METHOD_STYLE["p-diff"][1]
    ax.scatter(t.val_max_iou, t[VAL_ACC], s=16, alpha=0.35, color=colour, linewidths=0,
               label=f"trials ({len(t)})" if first else None)
    on = t[t.on_front].sort_values(["val_max_iou", VAL_ACC])
    ax.plot(on.val_max_iou, on[VAL_ACC], "-o", color=colour, ms=6, mec="black", mew=0.8, lw=1.2, zorder=4,
            label=f"Pareto front ({len(on)})" if first else None)
    chosen = t[t.selected]
    ax.scatter(chosen.val_max_iou, chosen[VAL_ACC], s=190, marker="*", color="#ffd700", edgecolors="black",
               linewidths=1.0, zorder=6, label="val-selected trial" if first else None)


def pareto_figure(panels: list[Panel], fronts: dict[str, Front], path: Path, note: str = "") -> Path:
    """`pareto.png`: per panel (its cells' fronts each drawn apart), val accuracy against val max-IoU."""
    fig, axes = canvas.grid(len(panels), 5.0, 4.0)
    if not panels:
        canvas.message(axes[0], "no cells in this sweep")
    for ax, panel in zip(axes, panels):
        shown = [fronts[c] for c in panel.cells if c in fronts and len(fronts[c].trials)]
        if not shown:
            canvas.message(ax, "no completed trial of a two-objective search (accuracy, novelty) in this cell",
                           panel.label)
            continue
        for i, front in enumerate(shown):
            _front_points(ax, front, i == 0)
        for family in [f for f in METHOD_STYLE if f != "p-diff"]:
            points = np.array([(x, y) for front in shown for f, x, y in front.references if f == family], dtype=float)
            if len(points):
                label, colour, marker = METHOD_STYLE[family]
                ax.scatter(points[:, 0], points[:, 1], s=110, color=colour, marker=marker, edgecolors="black",
                           linewidths=1.0, zorder=5, label=label)
        ax.set_xlabel("val max IoU to the snapshots (lower = more novel)")
        ax.set_ylabel("val accuracy (%)")
        ax.set_title(panel.label, fontsize=10)
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _saved(fig, path, note and note + "; each cell's front drawn apart")


def _saved(fig, path: Path, note: str | None) -> Path:
    """`fig` saved to `path`, with `note` (what the panels leave out) along its bottom."""
    if note:
        fig.text(0.5, 0.005, note, ha="center", fontsize=8, color="#444444")
    return canvas.save(fig, path)
