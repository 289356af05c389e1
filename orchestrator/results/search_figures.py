"""The sweep's figures, per cell (or per pooled panel, `canvas.panels_of`), from its trials rows:
`search_history.png` (val accuracy per trial in search order, with the best so far),
`parallel_coordinates.png` (the searched knobs, coloured by val accuracy) and `importance.png` (fANOVA
importance of the knobs for val accuracy, from an Optuna study rebuilt in memory)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence

import matplotlib.cm
import matplotlib.collections
import matplotlib.colors
import numpy as np
import pandas as pd

from orchestrator.results import canvas
from orchestrator.results.figure_data import SEARCH_ORDER
from orchestrator.results.trust import is_flagged

__all__ = ["IMPORTANCE_TRIALS", "PARALLEL_LINES", "history_figure", "parallel_figure", "cell_importance",
           "importance_figure"]

IMPORTANCE_TRIALS = 120  # completed trials a pooled importance panel's fANOVA sees (a seeded sample)
PARALLEL_LINES = 300  # trials a pooled parallel-coordinates panel draws (a seeded sample)


def _is_number(values: pd.Series) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def _hashable(v: Any) -> Any:
    if isinstance(v, (list, tuple, np.ndarray)):
        return "[" + ", ".join(str(_hashable(x)) for x in v) + "]"
    if isinstance(v, np.generic):
        return v.item()
    return v


def _log_scale(values: np.ndarray) -> bool:
    return bool(len(values) and (values > 0).all() and values.max() / values.min() > 10)


def history_figure(trials: pd.DataFrame, how: str, labels: dict[str, str], path: Path,
                   members: dict[str, Sequence[str]] | None = None) -> Path:
    """One panel per key of `labels`: a cell, or (`members`: key -> cell ids) the cells pooled in it, each with
    its own best-so-far line. `trials` and `how`: figure_data.trial_history's."""
    cells = list(labels)
    fig, axes = canvas.grid(len(cells), 4.6, 3.4)
    if not cells:
        canvas.message(axes[0], "no cells in this sweep")
    order = "search order" if how == SEARCH_ORDER else "completion order"
    for ax, cell in zip(axes, cells):
        t = canvas.rows_of(trials, cell, members)
        done = t[t.status == "completed"]
        if t.empty:
            canvas.message(ax, "no trials yet", labels[cell])
            continue
        ax.plot(done.order, done.val_acc_pct, "o", color=canvas.METHOD_STYLE["p-diff"][1], label="completed trial")
        if "collapsed" in done:  # a ring and an X: its generated models are (nearly) one model
            flagged = done[done.collapsed.map(is_flagged)]
            if len(flagged):
                ax.plot(flagged.order, flagged.val_acc_pct, "o", ms=12, mfc="none", mec="black", mew=1.5)
                ax.plot(flagged.order, flagged.val_acc_pct, "x", ms=7, color="black", mew=1.5,
                        label=f"collapsed ({len(flagged)} of {len(done)})")
        rest = t[(t.status != "completed") & t.val_acc_pct.notna()]
        if len(rest):
            ax.plot(rest.order, rest.val_acc_pct, "x", color="#777777", label="stopped / failed")
        pooled = done.cell_id.nunique() > 1 if "cell_id" in done else False
        for i, (_, one) in enumerate(done.groupby("cell_id") if pooled else [(cell, done)]):
            if len(one):
                ax.step(one.order, one.val_acc_pct.cummax(), where="post", color="black", lw=0.6 if pooled else 1.2,
                        alpha=0.35 if pooled else 1.0,
                        label=None if i else "best so far" + (" (each cell)" if pooled else ""))
        ax.set_xlabel(f"trial ({order}" + (" in its cell)" if pooled else ")"))
        ax.set_ylabel("val accuracy (%)")
        ax.set_xticks(sorted(set(t.order)))
        ax.set_title(labels[cell], fontsize=10)
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.text(0.5, 0.005, f"order: {how}", ha="center", fontsize=8, color="#444444")
    return canvas.save(fig, path)


# -- parallel coordinates ----------------------------------------------------------


def _scales(done: pd.DataFrame, knobs: list[str]) -> dict[str, tuple[str, float, float, list | None]]:
    """Each knob's axis: (log | linear | choice, low, high, the choices), over the whole sweep, so the cells'
    panels compare."""
    scales = {}
    for k in knobs:
        values = done[k].map(_hashable)
        if _is_number(values.dropna()) and values.notna().any():  # no completed trial (all failed): no range
            arr = values.dropna().to_numpy(dtype=float)
            log = _log_scale(arr)
            lo, hi = (np.log10(arr.min()), np.log10(arr.max())) if log else (arr.min(), arr.max())
            scales[k] = ("log" if log else "linear", lo, hi, None)
        else:
            choices = sorted(values.dropna().unique(), key=str)
            scales[k] = ("choice", 0, max(1, len(choices) - 1), choices)
    return scales


def _position(scale: tuple[str, float, float, list | None], v: Any) -> float:
    """A knob value's place on its axis, 0 to 1."""
    kind, lo, hi, choices = scale
    v = _hashable(v)
    if kind == "choice":
        x = choices.index(v)
    else:
        x = math.log10(v) if kind == "log" else float(v)
    return 0.5 if hi == lo else (x - lo) / (hi - lo)


def _ends(scale: tuple[str, float, float, list | None]) -> tuple[str, str]:
    """The texts at the bottom and top of a knob's axis."""
    kind, lo, hi, choices = scale
    if kind == "choice":
        return str(choices[0]), str(choices[-1])
    if kind == "log":
        return f"{10 ** lo:.3g}", f"{10 ** hi:.3g}"
    return f"{lo:.3g}", f"{hi:.3g}"


def parallel_figure(trials: pd.DataFrame, knobs: list[str], labels: dict[str, str], path: Path,
                    members: dict[str, Sequence[str]] | None = None) -> Path:
    cells = list(labels)
    fig, axes = canvas.grid(len(cells), max(4.6, 1.3 * (len(knobs) + 1)), 3.8, ncols=min(len(cells), 2) or 1)
    if not cells:
        canvas.message(axes[0], "no cells in this sweep")
    done = trials[trials.status == "completed"] if len(trials) else trials
    scales = _scales(done, knobs)
    for ax, cell in zip(axes, cells):
        t = canvas.rows_of(done, cell, members)
        if not knobs:
            canvas.message(ax, "no knob varies across this sweep's trials: nothing to compare", labels[cell])
            continue
        if t.empty or t.val_acc_pct.isna().all():
            canvas.message(ax, "no completed trials in this cell", labels[cell])
            continue
        _parallel_panel(fig, ax, t, knobs, scales)
        ax.set_title(labels[cell], fontsize=10, pad=14)
    return canvas.save(fig, path)


def _parallel_panel(fig, ax, t: pd.DataFrame, knobs: list[str], scales: dict) -> None:
    """One panel: a line per trial across the knobs' axes and val accuracy's, coloured by val accuracy."""
    cmap = matplotlib.colormaps["viridis"]
    # val accuracy (last axis, colour) spans the cell's own range: cells differ in level.
    lo_acc, hi_acc = float(t.val_acc_pct.min()), float(t.val_acc_pct.max())
    flat = hi_acc == lo_acc
    norm = matplotlib.colors.Normalize(vmin=lo_acc - 0.5 * flat, vmax=hi_acc + 0.5 * flat)
    axis_names = knobs + ["val_acc_pct"]
    lines = []
    for row in t.sort_values("val_acc_pct").itertuples():
        ys = [_position(scales[k], getattr(row, k)) for k in knobs]
        ys.append(0.5 if flat else (row.val_acc_pct - lo_acc) / (hi_acc - lo_acc))
        lines.append((ys, cmap(norm(row.val_acc_pct))))
    if len(lines) > PARALLEL_LINES:  # a pooled panel: a seeded sample (thousands of lines read as one blot)
        keep = np.random.default_rng(0).choice(len(lines), PARALLEL_LINES, replace=False)
        lines = [lines[i] for i in sorted(keep)]
        ax.text(0.99, 1.12, f"{PARALLEL_LINES} of {len(t)} trials", ha="right", fontsize=7, transform=ax.transAxes)
    if len(lines) <= 100:
        for ys, colour in lines:
            ax.plot(range(len(axis_names)), ys, "-o", color=colour, lw=1.8, ms=4, alpha=0.9)
    else:  # a pooled panel: one collection (thousands of separate lines draw slowly)
        ax.add_collection(matplotlib.collections.LineCollection(
            [list(zip(range(len(axis_names)), ys)) for ys, _ in lines], colors=[c for _, c in lines],
            linewidths=0.7, alpha=0.5))
    for j, k in enumerate(axis_names):
        ax.axvline(j, color="#999999", lw=0.8, zorder=0)
        lo_txt, hi_txt = (f"{lo_acc:.2f}", f"{hi_acc:.2f}") if k == "val_acc_pct" else _ends(scales[k])
        ax.text(j, -0.06, lo_txt, ha="center", va="top", fontsize=7)
        ax.text(j, 1.06, hi_txt, ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(axis_names)),
                  [k + (" (log)" if k in scales and scales[k][0] == "log" else "") for k in axis_names],
                  fontsize=8, rotation=20)
    ax.set_yticks([])
    ax.set_ylim(-0.15, 1.15)
    ax.set_xlim(-0.3, len(axis_names) - 0.7)
    fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="val accuracy (%)",
                 fraction=0.04, pad=0.02)


# -- importance --------------------------------------------------------------------


def _study_columns(done: pd.DataFrame, varying: list[str]) -> tuple[dict[str, Any], dict[str, list]]:
    """Each varying knob's Optuna distribution and its values over the trials, as Optuna takes them."""
    # optuna: a second to import, only where an importance panel is drawn
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    dists, columns = {}, {}
    for k in varying:
        values = done[k].map(_hashable)
        if _is_number(values):
            arr = values.to_numpy(dtype=float)
            if all(float(v).is_integer() for v in arr) and all(isinstance(v, (int, np.integer)) for v in values):
                dists[k] = IntDistribution(int(arr.min()), int(arr.max()))
                columns[k] = [int(v) for v in arr]
            else:
                dists[k] = FloatDistribution(float(arr.min()), float(arr.max()), log=_log_scale(arr))
                columns[k] = [float(v) for v in arr]
        else:
            choices = tuple(sorted({str(v) for v in values}))
            dists[k] = CategoricalDistribution(choices)
            columns[k] = [str(v) for v in values]
    return dists, columns


def cell_importance(trials: pd.DataFrame, knobs: list[str], *, n_trees: int = 64
                    ) -> tuple[dict[str, float] | None, str | None]:
    """fANOVA importances of the knobs for val_acc_pct in one cell's completed trials, or why there are none."""
    import optuna  # a second to import: only where an importance panel is drawn
    from optuna.trial import create_trial

    done = trials[(trials.status == "completed") & trials.val_acc_pct.notna()]
    if len(done) < 2:
        return None, f"{len(done)} completed trial(s): fANOVA needs at least 2"
    varying = [k for k in knobs if done[k].map(_hashable).nunique() > 1]
    if not varying:
        return None, "no knob varies across this cell's completed trials"
    if done.val_acc_pct.nunique() < 2:
        return None, f"every completed trial has the same val accuracy ({done.val_acc_pct.iloc[0]:.2f}%): " \
                     "nothing for the knobs to explain"
    dists, columns = _study_columns(done, varying)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for i, acc in enumerate(done.val_acc_pct.to_numpy(dtype=float)):
        study.add_trial(create_trial(params={k: columns[k][i] for k in varying}, distributions=dists, value=acc))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=n_trees, seed=0)
            return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), None
    except Exception as err:  # e.g. too little variation for the forest
        return None, f"fANOVA could not be computed: {type(err).__name__}: {err}"


def importance_figure(trials: pd.DataFrame, knobs: list[str], labels: dict[str, str], path: Path,
                      members: dict[str, Sequence[str]] | None = None) -> Path:
    cells = list(labels)
    fig, axes = canvas.grid(len(cells), 4.6, 3.2)
    if not cells:
        canvas.message(axes[0], "no cells in this sweep")
    for ax, cell in zip(axes, cells):
        t = canvas.rows_of(trials, cell, members)
        done = int((t.status == "completed").sum()) if len(t) else 0
        if done > IMPORTANCE_TRIALS:  # a pooled panel: fANOVA's forest grows with the trials (29 s for 1,200)
            t = t[t.status == "completed"].sample(IMPORTANCE_TRIALS, random_state=0)
        pooled = bool(members) and len(members.get(cell, ())) > 1  # 16 trees, not 64: 2 s -> 0.2 s a panel
        importances, why = (cell_importance(t, knobs, **({"n_trees": 16} if pooled else {})) if len(t)
                            else (None, "no trials yet"))
        if importances is None:
            canvas.message(ax, f"no importance: {why}", labels[cell])
            continue
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="#4c72b0")
        for j, n in enumerate(names):
            ax.text(importances[n] + 0.01, j, f"{importances[n]:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("importance for val accuracy (fANOVA)")
        used = f"{IMPORTANCE_TRIALS} of {done}" if done > IMPORTANCE_TRIALS else f"{done}"
        ax.set_title(f"{labels[cell]} ({used} trials)", fontsize=10)
    return canvas.save(fig, path)
