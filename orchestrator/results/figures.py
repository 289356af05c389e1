"""The report's figures, drawn with matplotlib (Agg) from a sweep's tables (`draw_all`).

The paper's three, per cell (here):
- `similarity.png`: mean IoU of the wrong-prediction sets, original-original
  (between snapshots), generated-generated and original-generated;
- `accuracy_novelty.png`: test accuracy against max IoU to the snapshots for
  the snapshots themselves (max IoU to the *other* snapshots), p-diff and each
  baseline;
- `tsne.png`: a t-SNE of the parameter vectors of snapshots, p-diff and baselines.

And the sweep's (`orchestrator.results.search_figures`): search history, parallel coordinates, importance.
What they draw is read by `orchestrator.results.figure_data`; their titles and captions are
`orchestrator.results.captions.FIGURES`. No stage module (`orchestrator.stage1`, `orchestrator.stage2`, Ray)
is imported. The p-diff vectors are those of the cell's val-selected trial.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from orchestrator.results import canvas
from orchestrator.results.canvas import METHOD_STYLE, Panel, panels_of
from orchestrator.results.figure_data import CellData, load_cells, trial_history
from orchestrator.results.front_data import fronts, objectives
from orchestrator.results.novelty_figures import max_iou_figure, pareto_figure
from orchestrator.results.search_figures import history_figure, importance_figure, parallel_figure
from orchestrator.results.sql import methods, searched_knobs
from orchestrator.results.views import connect
from orchestrator.store.tables import Store

__all__ = ["similarity_figure", "accuracy_novelty_figure", "tsne_figure", "similarity_groups_figure",
           "accuracy_novelty_groups_figure", "draw_all"]

_PAIRS = ["original-original", "generated-generated", "original-generated"]  # the similarity bars
_PAIR_TICKS = ["orig-orig", "gen-gen", "orig-gen"]
_PAIR_COLOURS = [METHOD_STYLE["original"][1], METHOD_STYLE["p-diff"][1], "#9467bd"]


def similarity_figure(cells: list[CellData], path: Path) -> Path:
    fig, axes = canvas.grid(len(cells), 4.2, 3.6)
    if not cells:
        canvas.message(axes[0], "no cells in this sweep")
    for ax, cell in zip(axes, cells):
        if cell.similarity is None:
            canvas.message(ax, cell.why_not or "no predictions", cell.label)
            continue
        if cell.best_trial is None or "generated-generated" not in cell.similarity:
            canvas.message(ax, "no completed trial with generated models in this cell", cell.label)
            continue
        values = [cell.similarity.get(n, float("nan")) for n in _PAIRS]
        bars = ax.bar(range(3), [0 if math.isnan(v) else v for v in values], color=_PAIR_COLOURS)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02,
                    "n/a" if math.isnan(v) else f"{v:.3f}", ha="center", fontsize=9)
        if cell.collapsed("p-diff"):
            ax.text(1, min(1.0, values[1] if not math.isnan(values[1]) else 0) + 0.09, "COLLAPSED", ha="center",
                    fontsize=8, fontweight="bold", color=_PAIR_COLOURS[1])
        ax.set_xticks(range(3), _PAIR_TICKS)
        ax.set_ylim(0, 1.2)
        ax.set_ylabel("mean IoU of wrong predictions")
        ax.set_title(cell.label, fontsize=10)
    return canvas.save(fig, path)


def _model_groups(ax, cell: CellData) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(method, test max IoU, test accuracy %) of the cell's snapshots, val-selected trial and baselines; the
    other trials' models are drawn faint on `ax` at once."""
    groups: list[tuple[str, np.ndarray, np.ndarray]] = []
    if cell.snapshot_max_iou is not None:
        groups.append(("original", cell.snapshot_max_iou, 100 * cell.snapshot_rows.test_acc.to_numpy()))
    others = cell.generated[cell.generated.trial_id != cell.best_trial]
    flagged = others.trial_id.isin(cell.collapsed_trials)
    for part, marker, label in ((others[~flagged], "o", "p-diff, other trials"),
                                (others[flagged], "x", "p-diff, other trials, collapsed")):
        if len(part):
            ax.scatter(part.test_max_iou, 100 * part.test_acc, s=14, alpha=0.25,
                       color=METHOD_STYLE["p-diff"][1], marker=marker, linewidths=0 if marker == "o" else 1,
                       label=label)
    best = cell.best_generated
    if len(best):
        groups.append(("p-diff", best.test_max_iou.to_numpy(), 100 * best.test_acc.to_numpy()))
    for method in methods():
        b = cell.baselines[cell.baselines.method == method]
        if len(b):
            groups.append((method, b.test_max_iou.to_numpy(), 100 * b.test_acc.to_numpy()))
    return groups


def _family_points(ax, method: str, x: np.ndarray, y: np.ndarray, collapsed: bool) -> None:
    """A family's models where they are (no jitter: identical models overlap, the legend says so) and its mean;
    a collapsed family's mean under a black X and the word."""
    label, colour, marker = METHOD_STYLE[method]
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    points = len({(a, b) for a, b in zip(x.round(6), y.round(6))})
    if points < len(x):
        label += f" ({len(x)} models at {points} point{'s' if points > 1 else ''})"
    if collapsed:
        label += ": COLLAPSED"
    ax.scatter(x, y, s=18, alpha=0.55, color=colour, marker=marker, linewidths=0,
               label=label, zorder=3 if method == "p-diff" else 2)
    ax.scatter([x.mean()], [y.mean()], s=130, color=colour, marker=marker, edgecolors="black",
               linewidths=1.2, zorder=6 if method == "p-diff" else 5)
    if collapsed:
        ax.scatter([x.mean()], [y.mean()], s=260, color="black", marker="x", linewidths=2.2, zorder=7)
        ax.annotate(f"{METHOD_STYLE[method][0]} collapsed", (x.mean(), y.mean()),
                    xytext=(8, 6), textcoords="offset points", fontsize=8, fontweight="bold",
                    color=colour, zorder=8)


def accuracy_novelty_figure(cells: list[CellData], path: Path) -> Path:
    fig, axes = canvas.grid(len(cells), 5.0, 4.0)
    if not cells:
        canvas.message(axes[0], "no cells in this sweep")
    for i, (ax, cell) in enumerate(zip(axes, cells)):
        groups = _model_groups(ax, cell)
        if not groups:
            canvas.message(ax, "no models to plot", cell.label)
            continue
        for method, x, y in groups:
            _family_points(ax, method, x, y, cell.collapsed(method))
        ax.set_xlabel("test max IoU to the snapshots (lower = more novel)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(cell.label, fontsize=10)
        if cell.snapshot_max_iou is None and cell.why_not:
            ax.text(0.01, 0.01, "snapshots not shown: " + cell.why_not[:60], fontsize=7, transform=ax.transAxes)
        if i == 0 or any(cell.collapsed(method) for method, _, _ in groups):
            ax.legend(fontsize=7, loc="lower left", framealpha=0.8)
    return canvas.save(fig, path)


def tsne_figure(cells: list[CellData], path: Path, note: str = "") -> Path:
    # scikit-learn: seconds to import, only where the t-SNE is drawn
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    fig, axes = canvas.grid(len(cells), 4.6, 4.0)
    if not cells:
        canvas.message(axes[0], "no cells in this sweep")
    for i, (ax, cell) in enumerate(zip(axes, cells)):
        groups = [("original", cell.snapshots), ("p-diff", canvas.vectors(cell.best_generated))]
        groups += [(m, canvas.vectors(cell.baselines[cell.baselines.method == m])) for m in methods()]
        groups = [(m, v) for m, v in groups if len(v)]
        # A NaN or infinite vector (a diverged trial) cannot be embedded: skip it, and say so.
        finite = [(m, v[np.isfinite(v).all(axis=1)]) for m, v in groups]
        skipped = sum(len(v) for _, v in groups) - sum(len(v) for _, v in finite)
        groups = [(m, v) for m, v in finite if len(v)]
        x = np.concatenate([v for _, v in groups]) if groups else np.zeros((0, 0))
        note = f"{skipped} non-finite vector(s) skipped" if skipped else ""
        if len(x) < 5:
            canvas.message(ax, f"{len(x)} parameter vectors: too few for a t-SNE" + (f" ({note})" if note else ""),
                           cell.label)
            continue
        if note:
            ax.text(0.01, 0.01, note, fontsize=7, color="#aa0000", transform=ax.transAxes)
        perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
        # One OpenMP thread: on a busy machine the threads' spin-waits made this 50x slower.
        with warnings.catch_warnings(), threadpool_limits(1):
            warnings.simplefilter("ignore")
            emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0,
                       learning_rate="auto").fit_transform(x.astype(np.float64))
        start = 0
        for method, v in groups:
            label, colour, marker = METHOD_STYLE[method]
            e = emb[start:start + len(v)]
            start += len(v)
            if cell.collapsed(method):
                label += " (COLLAPSED)"
            ax.scatter(e[:, 0], e[:, 1], s=16, alpha=0.7, color=colour, marker=marker, linewidths=0, label=label)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{cell.label} (perplexity {perplexity:.0f})", fontsize=10)
        if i == 0 or any(cell.collapsed(m) for m, _ in groups):
            ax.legend(fontsize=7, loc="best", framealpha=0.8)
    if note:
        fig.text(0.5, 0.005, note, ha="center", fontsize=8, color="#444444")
    return canvas.save(fig, path)


# -- many cells: pooled panels (canvas.panels_of) ------------------------------------------


def similarity_groups_figure(panels: list[Panel], cells: dict[str, CellData], path: Path, note: str) -> Path:
    """`similarity.png` of pooled panels: each bar the mean over the group's cells, the whiskers their range."""
    fig, axes = canvas.grid(len(panels), 4.2, 3.6)
    for ax, panel in zip(axes, panels):
        values = np.array([[cells[c].similarity.get(n, np.nan) for n in _PAIRS] for c in panel.cells
                           if cells[c].similarity], dtype=float).reshape(-1, 3)
        usable = ~np.isnan(values).all(axis=0)
        if not len(values) or not usable.any():
            canvas.message(ax, "no cell with similarity numbers in this group", panel.label)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an all-NaN column: no bar
            mean, lo, hi = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
        mean, lo, hi = (np.where(np.isnan(a), 0.0, a) for a in (mean, lo, hi))
        ax.bar(range(3), mean, color=_PAIR_COLOURS, yerr=[mean - lo, hi - mean], capsize=4, ecolor="#333333")
        for j, v in enumerate(mean):
            ax.text(j, hi[j] + 0.03, f"{v:.3f}" if usable[j] else "n/a", ha="center", fontsize=9)
        collapsed = sum(cells[c].collapsed("p-diff") for c in panel.cells)
        if collapsed:
            ax.text(1, 1.1, f"{collapsed} COLLAPSED", ha="center", fontsize=8, fontweight="bold",
                    color=_PAIR_COLOURS[1])
        ax.set_xticks(range(3), _PAIR_TICKS)
        ax.set_ylim(0, 1.2)
        ax.set_ylabel(f"mean IoU over {len(values)} cells (whiskers: range)", fontsize=8)
        ax.set_title(panel.label, fontsize=10)
    fig.text(0.5, 0.005, note, ha="center", fontsize=8, color="#444444")
    return canvas.save(fig, path)


def _cell_means(cells: list[CellData]) -> dict[str, list[tuple[float, float]]]:
    """Per method, one (mean test max-IoU, mean test accuracy %) point per cell."""
    points: dict[str, list[tuple[float, float]]] = {}
    for c in cells:
        if c.snapshot_max_iou is not None and len(c.snapshot_rows):
            points.setdefault("original", []).append((float(np.mean(c.snapshot_max_iou)),
                                                      100 * float(c.snapshot_rows.test_acc.mean())))
        best = c.best_generated
        if len(best):
            points.setdefault("p-diff", []).append((float(best.test_max_iou.mean()), 100 * float(best.test_acc.mean())))
        for method, rows in c.baselines.groupby("method") if len(c.baselines) else ():
            points.setdefault(method, []).append((float(rows.test_max_iou.mean()), 100 * float(rows.test_acc.mean())))
    return points


def accuracy_novelty_groups_figure(panels: list[Panel], cells: dict[str, CellData], path: Path, note: str) -> Path:
    """`accuracy_novelty.png` of pooled panels: one point per cell and method (its models' mean test max-IoU and
    mean test accuracy), large outlined markers the means over the group's cells."""
    fig, axes = canvas.grid(len(panels), 5.0, 4.0)
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        points = _cell_means([cells[c] for c in panel.cells])
        if not points:
            canvas.message(ax, "no models to plot", panel.label)
            continue
        for method in [m for m in METHOD_STYLE if m in points]:
            label, colour, marker = METHOD_STYLE[method]
            xy = np.array(points[method], dtype=float)
            ax.scatter(xy[:, 0], xy[:, 1], s=16, alpha=0.5, color=colour, marker=marker, linewidths=0,
                       label=f"{label} ({len(xy)} cells)", zorder=3 if method == "p-diff" else 2)
            ax.scatter([np.nanmean(xy[:, 0])], [np.nanmean(xy[:, 1])], s=130, color=colour, marker=marker,
                       edgecolors="black", linewidths=1.2, zorder=6 if method == "p-diff" else 5)
        collapsed = sum(cells[c].collapsed("p-diff") for c in panel.cells)
        ax.set_xlabel("mean test max IoU to the snapshots (lower = more novel)")
        ax.set_ylabel("mean test accuracy (%)")
        ax.set_title(panel.label + (f", {collapsed} p-diff COLLAPSED" if collapsed else ""), fontsize=10)
        if i == 0:
            ax.legend(fontsize=7, loc="lower left", framealpha=0.8)
    fig.text(0.5, 0.005, note + "; each point a cell's mean", ha="center", fontsize=8, color="#444444")
    return canvas.save(fig, path)


# -- every figure ------------------------------------------------------------------


def draw_all(store: Store, out: Path, best_trials: dict[str, str | None], knobs: list[str] | None = None,
             log: Callable[[str], None] = lambda s: None) -> tuple[dict[str, Path], str, list[CellData]]:
    """Draw the paper's and the sweep's figures into `out`; returns their paths, how trials were ordered, and
    the cells.

    `best_trials`: the val-selected trial of each cell; `knobs`: the searched knobs (default: those that vary).
    """
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # At most MAX_PANELS panels a figure (panels_of): cells, or arch x dataset groups pooling their cells. Only
    # the cells that stand for a panel have their parameter vectors read (the t-SNE's).
    panels, note = panels_of(store.read_pandas("sources", columns=["cell_id", "arch", "dataset", "seed"]))
    trials, how = trial_history(store)
    cells = load_cells(store, best_trials, vectors=[p.cells[0] for p in panels], trials=trials)
    log(f"similarity from the stored wrong-prediction sets of {len(cells)} cell(s) ({time.perf_counter() - t0:.1f}s)")
    by_id = {c.cell_id: c for c in cells}
    labels = {p.key: p.label for p in panels}
    members = {p.key: p.cells for p in panels}
    first = [by_id[p.cells[0]] for p in panels]  # one cell per panel, where cells cannot be pooled
    pooled = any(len(p.cells) > 1 for p in panels)
    if knobs is None:
        knobs = searched_knobs(connect(store))[0] if len(trials) else []
    paths = {}
    # The Pareto front only where a search had two objectives (accuracy, novelty): its journal says so.
    two = [c for p in panels for c, n in objectives(store, p.cells).items() if n == 2]
    steps = {
        "similarity.png": (lambda p: similarity_groups_figure(panels, by_id, p, note)) if pooled else
        (lambda p: similarity_figure(cells, p)),
        "max_iou.png": lambda p: max_iou_figure(panels, by_id, p, note),
        "accuracy_novelty.png": (lambda p: accuracy_novelty_groups_figure(panels, by_id, p, note)) if pooled else
        (lambda p: accuracy_novelty_figure(cells, p)),
        "pareto.png": lambda p: pareto_figure(panels, fronts(trials, [by_id[c] for c in two]), p, note),
        "tsne.png": lambda p: tsne_figure(first, p, note and note + "; t-SNE: the first cell (seed) of each"),
        "search_history.png": lambda p: history_figure(trials, how, labels, p, members),
        "parallel_coordinates.png": lambda p: parallel_figure(trials, knobs, labels, p, members),
        "importance.png": lambda p: importance_figure(trials, knobs, labels, p, members),
    }
    if not two:
        del steps["pareto.png"]
    for name, draw in steps.items():
        t = time.perf_counter()
        paths[name] = draw(out / name)
        log(f"{name} ({time.perf_counter() - t:.1f}s)")
    return paths, how, cells
