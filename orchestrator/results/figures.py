"""The report's figures, drawn with matplotlib (Agg) from a sweep's tables.

The paper's three, per cell:
- `similarity.png`: mean IoU of the wrong-prediction sets, original-original
  (between snapshots), generated-generated and original-generated;
- `accuracy_novelty.png`: test accuracy against max IoU to the snapshots for
  the snapshots themselves (max IoU to the *other* snapshots), p-diff and each
  baseline;
- `tsne.png`: a t-SNE of the parameter vectors of snapshots, p-diff and baselines.

And the sweep's, per cell: `search_history.png` (val accuracy per trial in
completion order, with the best so far), `parallel_coordinates.png` (the searched
knobs, coloured by val accuracy) and `importance.png` (fANOVA importance of
the knobs for val accuracy, from an Optuna study rebuilt in memory).

Everything is drawn from the tables alone: each model's wrong-prediction set on the
test split is stored with it (`test_wrong`, packed bits, `pdiff.evaluate.pack_wrong`),
so similarity, IoU matrices, the snapshots' max IoU to each other and their
accuracies are computed from the tables (`pdiff.evaluate.iou_matrix`). No network is
built and no stage module (`orchestrator.stage1.collection`, `orchestrator.stage2.search`, Ray) is
imported. The p-diff vectors are those of the cell's val-selected trial.
"""

from __future__ import annotations

import contextlib
import math
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from orchestrator.console import cell_label
from orchestrator.results.sql import methods, searched_knobs  # noqa: E402
from orchestrator.results.views import connect  # noqa: E402
from orchestrator.store.tables import HIDDEN, WRITER, WRITTEN, CorruptTable, Store  # noqa: E402
from pdiff.names import COLLAPSE_IOU, LABELS

__all__ = ["CellData", "FIGURES", "load_cells", "trial_history", "draw_all"]

# File name -> (title, caption) of every figure the report draws, in the report's order.
FIGURES: dict[str, tuple[str, str]] = {
    "similarity.png": (
        "Similarity of wrong predictions",
        "Mean IoU of the sets of test examples two models get wrong: between two snapshots (original-original, "
        "self-pairs excluded), between two p-diff models of the val-selected trial (generated-generated), and "
        "between a p-diff model and a snapshot (original-generated). Computed from each model's wrong-prediction "
        "set as stored in the tables (test_wrong). 'COLLAPSED' over generated-generated: the trial is flagged "
        "collapsed in the tables (its models are (nearly) one model).",
    ),
    "accuracy_novelty.png": (
        "Accuracy against novelty",
        "Test accuracy of every model against its test max IoU to the snapshots (test_max_iou; 1 = the same "
        "mistakes as some snapshot, a copy). Snapshots: max IoU to the other snapshots. p-diff: the val-selected "
        "trial (other trials faint; x: a collapsed trial). Large outlined markers: each method's mean. Up and to the left is "
        "better. No jitter: each point is drawn at its model's values, so identical models overlap, and the "
        "legend gives the number of models and of distinct points where they differ. A collapsed family "
        "(pairwise IoU of its wrong-prediction sets >= 0.99 or spread < 0.05x the snapshots', from the tables) "
        "has a black X over its mean and the label 'collapsed': its models are (nearly) one model.",
    ),
    "tsne.png": (
        "t-SNE of parameter vectors",
        "t-SNE (scikit-learn, PCA initialisation, perplexity scaled to the number of vectors) of the generated "
        "parameter subset: snapshots, p-diff (val-selected trial) and each baseline. Vectors holding NaN or "
        "infinite values (a diverged run) are left out, with a count on the panel.",
    ),
    "search_history.png": (
        "Search history",
        "Objective (val accuracy of the val-selected generated model) of each trial in completion order, "
        "taken from the modification time of its `trials` file (the row a trial writes last); the line is the "
        "best so far. Grey crosses: trials stopped early or failed (their last reported value). Ringed black X: a "
        "collapsed trial (its generated models are (nearly) one model: pairwise IoU of their wrong-prediction "
        "sets >= 0.99 or spread < 0.05x the snapshots').",
    ),
    "parallel_coordinates.png": (
        "Searched hyperparameters",
        "Parallel coordinates of the knobs that vary across the sweep's trials, each axis normalised to the "
        "sweep's range (log scale for knobs spanning more than a decade), coloured by val accuracy.",
    ),
    "importance.png": (
        "Hyperparameter importance",
        "fANOVA importance of each searched knob for val accuracy (optuna.importance.get_param_importances on "
        "a study rebuilt in memory from the completed trials of the cell).",
    ),
}

_BASELINE_STYLES = [("#1f77b4", "s"), ("#2ca02c", "^"), ("#ff7f0e", "D"), ("#8c564b", "v"), ("#e377c2", "P")]


def _method_style() -> dict[str, tuple[str, str, str]]:
    """(label, colour, marker) of the snapshots, p-diff and each baseline method (pdiff.baselines, in order)."""

    style = {"original": ("snapshots", "#555555", "o"), "p-diff": ("p-diff", "#d62728", "o")}
    for i, m in enumerate(methods()):
        style[m] = (LABELS[m][0], *_BASELINE_STYLES[i % len(_BASELINE_STYLES)])
    return style


METHOD_STYLE = _method_style()


@dataclass
class CellData:
    """One cell's vectors and the similarity numbers computed from its stored wrong-prediction sets."""

    cell_id: str
    arch: str
    dataset: str
    seed: int
    best_trial: str | None
    snapshots: np.ndarray  # (K, n) float32
    snapshot_rows: pd.DataFrame  # index, val_acc, test_acc
    # every trial's generated rows: trial_id, index, val_acc, test_acc, test_max_iou, test_wrong, params
    generated: pd.DataFrame
    baselines: pd.DataFrame  # method, index, test_acc, test_max_iou, test_wrong, params
    similarity: dict[str, float] | None = None  # original-original, generated-generated, original-generated
    snapshot_max_iou: np.ndarray | None = None  # (K,) max IoU of each snapshot to the other snapshots
    # Test accuracy per model recomputed from its stored wrong-prediction set, per group ("original",
    # "p-diff": the best trial, each baseline): the report checks it against the stored test_acc.
    recomputed: dict[str, np.ndarray] = field(default_factory=dict)
    why_not: str | None = None  # why the similarity numbers could not be computed
    # Collapse signals from the tables, per family ("original", "p-diff": the best trial, each baseline):
    # pairwise_iou, distinct_sets, spread_ratio, collapsed (absent where the tables predate them).
    families: dict[str, dict[str, Any]] = field(default_factory=dict)
    collapsed_trials: set[str] = field(default_factory=set)  # completed trials flagged collapsed

    @property
    def label(self) -> str:
        return cell_label(self.arch, self.dataset, self.seed)

    def collapsed(self, method: str) -> bool:
        """Whether a family is flagged collapsed in the tables (unknown counts as not)."""
        flag = self.families.get(method, {}).get("collapsed")
        return flag is not None and flag is not pd.NA and not (isinstance(flag, float) and math.isnan(flag)) \
            and bool(flag)

    @property
    def best_generated(self) -> pd.DataFrame:
        return self.generated[self.generated.trial_id == self.best_trial].sort_values("index")


# -- reading -----------------------------------------------------------------


def load_cells(store: Store, best_trials: dict[str, str | None], *, predictions: bool = True,
               vectors: Iterable[str] | None = None, trials: pd.DataFrame | None = None) -> list[CellData]:
    """Every cell's snapshots, generated and baseline models; with `predictions`, the similarity numbers
    computed from their stored wrong-prediction sets (CellData.similarity, snapshot_max_iou, recomputed).

    Each table is read once for all cells, without the parameter vectors; `vectors` names the cells whose
    vectors are read too (the t-SNE's: snapshots, the val-selected trial's generated models, the baselines;
    None: every cell). The others have an empty `snapshots` array and no `params` column: at sweep scale
    the vectors are most of the tables' bytes. A `generated` row without a trial id takes its writer's.
    `trials`: the trials table, where the caller has read it already (`trial_history`)."""
    sources = store.read_pandas("sources").sort_values(["arch", "dataset", "seed"])
    if trials is None:  # every column: those a sweep wrote before some existed may lack them
        trials = store.read_pandas("trials")
    # Only completed trials' generated models are drawn: a failed trial's vectors may be NaN.
    completed: dict[str, set[str]] = {}
    trial_rows: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    for r in trials.to_dict("records"):
        if r["status"] == "completed":
            completed.setdefault(r["cell_id"], set()).add(r["trial_id"])
            trial_rows.setdefault(r["cell_id"], {})[(r["cell_id"], r["trial_id"])] = r
    wanted = set(sources.cell_id) if vectors is None else set(vectors)

    def by_cell(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        # Sorted once, then sliced: a `take` per cell on 400-chunk Arrow columns took seconds.
        frame = frame.sort_values("cell_id", kind="stable").reset_index(drop=True)
        ids = frame.cell_id.to_numpy(dtype=object)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], int)
        ends = np.r_[starts[1:], len(ids)]
        return {ids[a]: frame.iloc[a:b] for a, b in zip(starts, ends)}

    snapshots = by_cell(store.read_pandas("checkpoints", columns=["cell_id", "index", "val_acc", "test_acc",
                                                                  "test_wrong"]))
    gen = store.read_pandas("generated", columns=["cell_id", "trial_id", "index", "val_acc", "test_acc",
                                                  "test_max_iou"], writers=True)
    gen["trial_id"] = gen.trial_id.fillna(gen[WRITER])
    # The packed sets of the val-selected trials' models only: the others' are most of the rows.
    import pyarrow.compute as pc

    chosen = sorted({t for t in best_trials.values() if isinstance(t, str)})
    sets = store.read_pandas("generated", columns=["cell_id", "trial_id", "index", "test_wrong"], writers=True,
                             where=pc.field("trial_id").isin(chosen) | pc.field("trial_id").is_null())
    sets["trial_id"] = sets.trial_id.fillna(sets[WRITER])
    gen = gen.drop(columns=list(HIDDEN)).merge(sets.drop(columns=list(HIDDEN)), how="left",
                                               on=["cell_id", "trial_id", "index"])
    generated = by_cell(gen)
    baselines = by_cell(store.read_pandas("baselines", heavy=["test_wrong"]))
    gen_columns = ["trial_id", "index", "val_acc", "test_acc", "test_max_iou", "test_wrong"]
    cells = []
    for row in sources.itertuples():
        snaps = snapshots.get(row.cell_id, pd.DataFrame(columns=["index", "val_acc", "test_acc", "test_wrong"]))
        snaps = snaps.sort_values("index").reset_index(drop=True)
        cell = CellData(
            cell_id=row.cell_id, arch=row.arch, dataset=row.dataset, seed=int(row.seed),
            best_trial=best_trials.get(row.cell_id), snapshots=np.zeros((0, 0), np.float32),
            snapshot_rows=snaps.drop(columns=["test_wrong"]),
            generated=generated.get(row.cell_id, pd.DataFrame(columns=gen_columns))[gen_columns],
            baselines=baselines.get(row.cell_id, pd.DataFrame(columns=["method", "index", "test_acc",
                                                                       "test_max_iou", "test_wrong"])),
        )
        _families(cell, row._asdict(), trial_rows.get(row.cell_id, {}))
        cell.baselines = cell.baselines[[c for c in ("method", "index", "val_acc", "test_acc", "test_max_iou",
                                                     "test_wrong") if c in cell.baselines]]
        keep = cell.generated.trial_id.isin(completed.get(row.cell_id, set())).to_numpy(dtype=bool)
        cell.generated = cell.generated[keep].reset_index(drop=True)  # an array: `df[[]]` would drop the columns
        if row.cell_id in wanted:
            _read_vectors(store, cell, snaps)
        if predictions:
            try:
                with _one_thread():
                    _recompute(row._asdict(), snaps.test_wrong, cell)
            except Exception as err:  # a set missing from the tables: say so in the figure
                cell.why_not = f"similarity not computed: {type(err).__name__}: {err}"
        cells.append(cell)
    return cells


@contextlib.contextmanager
def _one_thread():
    """One torch thread for the tiny IoU matrices: on a busy machine, threads meeting at every op's barrier
    made them 100x slower (30 ms for a 50 x 50 matrix)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _read_vectors(store: Store, cell: CellData, snaps: pd.DataFrame) -> None:
    """The cell's parameter vectors: `snapshots` (in snapshot order), and a `params` column on its generated
    rows (the val-selected trial's; None on the others) and on its baselines."""
    keys = ["index"]
    snap = store.read_pandas("checkpoints", cell.cell_id, columns=["index", "params"])
    snap = snaps[keys].merge(snap, on=keys, how="left")
    cell.snapshots = np.stack(snap.params.to_numpy()).astype(np.float32) if len(snap) else np.zeros((0, 0))
    gen = store.read_pandas("generated", cell.cell_id, columns=["trial_id", "index", "params"], writers=True)
    gen["trial_id"] = gen.trial_id.fillna(gen[WRITER])
    gen = gen[gen.trial_id == cell.best_trial][["trial_id", "index", "params"]]
    cell.generated = cell.generated.merge(gen, on=["trial_id", "index"], how="left")
    if len(cell.baselines):
        base = store.read_pandas("baselines", cell.cell_id, columns=["method", "index", "params"])
        cell.baselines = cell.baselines.merge(base, on=["method", "index"], how="left")


SIGNALS = ("pairwise_iou", "distinct_sets", "spread_ratio", "collapsed")


def _families(cell: CellData, source: dict[str, Any], trials: dict[tuple[str, str], dict[str, Any]]) -> None:
    """The collapse signals the tables hold for each of the cell's families (see CellData.families)."""

    def known(v: Any) -> bool:
        return v is not None and not (isinstance(v, float) and math.isnan(v))

    if known(source.get("snapshot_pairwise_iou")):
        cell.families["original"] = {"pairwise_iou": source["snapshot_pairwise_iou"],
                                     "distinct_sets": source.get("snapshot_distinct_sets"), "spread_ratio": 1.0,
                                     "collapsed": source["snapshot_pairwise_iou"] >= COLLAPSE_IOU}
    for (cell_id, trial_id), t in trials.items():
        if cell_id == cell.cell_id and known(t.get("collapsed")) and t["collapsed"]:
            cell.collapsed_trials.add(trial_id)
    best = trials.get((cell.cell_id, cell.best_trial))
    if best is not None and known(best.get("pairwise_iou")):
        cell.families["p-diff"] = {k: best.get(k) for k in SIGNALS}
    b = cell.baselines
    if "family_pairwise_iou" in b:
        for first in b.drop_duplicates("method").to_dict("records"):  # a family's signals are on every row
            if known(first.get("family_pairwise_iou")):
                cell.families[first["method"]] = {k: first.get(f"family_{k}") for k in SIGNALS}


def _recompute(source, test_wrong: pd.Series, cell: CellData) -> None:
    """The cell's similarity numbers from the wrong-prediction sets stored in the tables (packed bits,
    pdiff.evaluate.pack_wrong): no network is built and nothing is scored again."""
    import torch

    from pdiff.evaluate import iou_matrix, max_iou, unpack_wrong_rows

    n = source.get("n_test")
    if n is None or (isinstance(n, float) and math.isnan(n)):
        raise ValueError("the sources row has no n_test (tables of an older schema)")
    n = int(n)
    if not len(test_wrong):
        raise ValueError("the cell has no snapshots")

    def unpack(blobs: pd.Series) -> torch.Tensor:
        if blobs.isna().any():
            raise ValueError("a model's wrong-prediction set is missing from the tables")
        return unpack_wrong_rows(blobs, n)

    def accuracy(wrong: torch.Tensor) -> np.ndarray:
        return 1.0 - wrong.sum(1).numpy().astype(np.float64) / n

    snap = unpack(test_wrong)
    cell.recomputed["original"] = accuracy(snap)
    oo = iou_matrix(snap, snap)
    k = len(oo)
    if k > 1:
        off = ~torch.eye(k, dtype=torch.bool)
        cell.snapshot_max_iou = max_iou(snap).numpy()
        similarity = {"original-original": float(oo[off].mean())}
    else:
        similarity = {"original-original": float("nan")}
    for method, rows in cell.baselines.groupby("method") if "test_wrong" in cell.baselines else ():
        cell.recomputed[method] = accuracy(unpack(rows.sort_values("index").test_wrong))
    best = cell.best_generated
    if len(best):
        gen = unpack(best.test_wrong)
        cell.recomputed["p-diff"] = accuracy(gen)
        gg = iou_matrix(gen, gen)
        n_gen = len(gg)
        similarity["generated-generated"] = (float(gg[~torch.eye(n_gen, dtype=torch.bool)].mean()) if n_gen > 1
                                             else float("nan"))
        similarity["original-generated"] = float(iou_matrix(gen, snap).mean())
    cell.similarity = similarity


def trial_history(store: Store) -> tuple[pd.DataFrame, str]:
    """Every trials row with its completion rank per cell, and how the order was found.

    Trials rows carry no timestamp; a trial writes its row last, so the file's
    modification time is its completion time. Where the times cannot tell the
    trials apart (e.g. a copied folder), the order falls back to the row order.
    """
    # `_written_ns`: the modification time of the row's own file, or, once compacted, of the file it had.
    trials = store.read_pandas("trials", writers=True)
    written = trials.pop(WRITTEN)
    trials = trials.drop(columns=[WRITER])
    if trials.empty:
        return trials.assign(completed_at=pd.Series(dtype=float), order=pd.Series(dtype=int)), "no trials"
    trials["row"] = np.arange(len(trials))
    trials["completed_at"] = written.to_numpy()
    known = trials.completed_at.notna()
    distinct = trials[known].groupby("cell_id").completed_at.nunique()
    counts = trials[known].groupby("cell_id").size()
    usable = bool(known.all() and (distinct == counts).all())
    if usable:
        trials = trials.sort_values(["cell_id", "completed_at", "row"])
        how = "completion order: modification time of each trial's `trials` file"
    else:
        trials = trials.sort_values(["cell_id", "row"])
        how = "trial row order (file modification times cannot tell the trials apart)"
    trials["order"] = trials.groupby("cell_id").cumcount() + 1
    return trials.reset_index(drop=True), how


# -- drawing helpers ---------------------------------------------------------


def _grid(n: int, width: float = 4.6, height: float = 3.6, ncols: int | None = None):
    n = max(1, n)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _message(ax, text: str, title: str | None = None) -> None:
    """A panel that explains why there is nothing to draw."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("#cccccc")
    ax.text(0.5, 0.5, "\n".join(textwrap.wrap(text, 44)), ha="center", va="center", fontsize=9,
            color="#444444", transform=ax.transAxes)
    if title:
        ax.set_title(title, fontsize=10)


def _save(fig, path: Path, title: str) -> Path:
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90, facecolor="white")
    plt.close(fig)
    return path


def _params(df: pd.DataFrame) -> np.ndarray:
    if "params" not in df.columns:  # no rows at all (e.g. a sweep without baselines)
        return np.zeros((0, 0), np.float32)
    vectors = [v for v in df.params if v is not None]  # a failed writer may store no vector
    return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, 0), np.float32)


# -- the paper's figures -----------------------------------------------------


def similarity_figure(cells: list[CellData], path: Path) -> Path:
    fig, axes = _grid(len(cells), 4.2, 3.6)
    if not cells:
        _message(axes[0], "no cells in this sweep")
    names = ["original-original", "generated-generated", "original-generated"]
    colours = [METHOD_STYLE["original"][1], METHOD_STYLE["p-diff"][1], "#9467bd"]
    for ax, cell in zip(axes, cells):
        if cell.similarity is None:
            _message(ax, cell.why_not or "no predictions", cell.label)
            continue
        if cell.best_trial is None or "generated-generated" not in cell.similarity:
            _message(ax, "no completed trial with generated models in this cell", cell.label)
            continue
        values = [cell.similarity.get(n, float("nan")) for n in names]
        bars = ax.bar(range(3), [0 if math.isnan(v) else v for v in values], color=colours)
        for bar, v in zip(bars, values):
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02,
                    "n/a" if math.isnan(v) else f"{v:.3f}", ha="center", fontsize=9)
        if cell.collapsed("p-diff"):
            ax.text(1, min(1.0, values[1] if not math.isnan(values[1]) else 0) + 0.09, "COLLAPSED", ha="center",
                    fontsize=8, fontweight="bold", color=colours[1])
        ax.set_xticks(range(3), ["orig-orig", "gen-gen", "orig-gen"])
        ax.set_ylim(0, 1.2)
        ax.set_ylabel("mean IoU of wrong predictions")
        ax.set_title(cell.label, fontsize=10)
    return _save(fig, path, FIGURES[path.name][0])


def accuracy_novelty_figure(cells: list[CellData], path: Path) -> Path:
    fig, axes = _grid(len(cells), 5.0, 4.0)
    if not cells:
        _message(axes[0], "no cells in this sweep")
    for i, (ax, cell) in enumerate(zip(axes, cells)):
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
        if not groups:
            _message(ax, "no models to plot", cell.label)
            continue
        any_collapsed = False
        for method, x, y in groups:
            label, colour, marker = METHOD_STYLE[method]
            # No jitter: every point is where its model is. Identical models overlap; the legend says so.
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            points = len({(a, b) for a, b in zip(x.round(6), y.round(6))})
            if points < len(x):
                label += f" ({len(x)} models at {points} point{'s' if points > 1 else ''})"
            collapsed = cell.collapsed(method)
            if collapsed:
                label += ": COLLAPSED"
                any_collapsed = True
            ax.scatter(x, y, s=18, alpha=0.55, color=colour, marker=marker, linewidths=0,
                       label=label, zorder=3 if method == "p-diff" else 2)
            ax.scatter([x.mean()], [y.mean()], s=130, color=colour, marker=marker, edgecolors="black",
                       linewidths=1.2, zorder=6 if method == "p-diff" else 5)
            if collapsed:  # a black X over the family's mean, and the word
                ax.scatter([x.mean()], [y.mean()], s=260, color="black", marker="x", linewidths=2.2, zorder=7)
                ax.annotate(f"{METHOD_STYLE[method][0]} collapsed", (x.mean(), y.mean()),
                            xytext=(8, 6), textcoords="offset points", fontsize=8, fontweight="bold",
                            color=colour, zorder=8)
        ax.set_xlabel("test max IoU to the snapshots (lower = more novel)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(cell.label, fontsize=10)
        if cell.snapshot_max_iou is None and cell.why_not:
            ax.text(0.01, 0.01, "snapshots not shown: " + cell.why_not[:60], fontsize=7, transform=ax.transAxes)
        if i == 0 or any_collapsed:
            ax.legend(fontsize=7, loc="lower left", framealpha=0.8)
    return _save(fig, path, FIGURES[path.name][0])


def tsne_figure(cells: list[CellData], path: Path, note: str = "") -> Path:
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    fig, axes = _grid(len(cells), 4.6, 4.0)
    if not cells:
        _message(axes[0], "no cells in this sweep")
    for i, (ax, cell) in enumerate(zip(axes, cells)):
        groups = [("original", cell.snapshots), ("p-diff", _params(cell.best_generated))]
        groups += [(m, _params(cell.baselines[cell.baselines.method == m])) for m in methods()]
        groups = [(m, v) for m, v in groups if len(v)]
        # A NaN or infinite vector (a diverged trial) cannot be embedded: skip it, and say so.
        finite = [(m, v[np.isfinite(v).all(axis=1)]) for m, v in groups]
        skipped = sum(len(v) for _, v in groups) - sum(len(v) for _, v in finite)
        groups = [(m, v) for m, v in finite if len(v)]
        x = np.concatenate([v for _, v in groups]) if groups else np.zeros((0, 0))
        note = f"{skipped} non-finite vector(s) skipped" if skipped else ""
        if len(x) < 5:
            _message(ax, f"{len(x)} parameter vectors: too few for a t-SNE" + (f" ({note})" if note else ""),
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
    return _save(fig, path, FIGURES[path.name][0])


# -- many cells: a bounded number of panels ------------------------------------------

MAX_PANELS = 12  # panels per figure
IMPORTANCE_TRIALS = 120  # completed trials a pooled importance panel's fANOVA sees (a seeded sample)
PARALLEL_LINES = 300  # trials a pooled parallel-coordinates panel draws (a seeded sample)


@dataclass(frozen=True)
class Panel:
    """One panel of a figure: a cell, or the cells of one arch x dataset group pooled (the first one stands for
    the group where cells cannot be pooled: the t-SNE, the loss curves)."""

    key: str
    label: str
    cells: tuple[str, ...]


def panels_of(sources: pd.DataFrame) -> tuple[list[Panel], str]:
    """The panels of each figure, and a note saying what they show. Up to MAX_PANELS cells: one panel per cell.
    Beyond: one per arch x dataset group (its cells are the seeds), the first MAX_PANELS groups; every cell
    has its own page in the report either way."""
    rows = sources.sort_values(["arch", "dataset", "seed"])
    if len(rows) <= MAX_PANELS:
        return [Panel(r.cell_id, cell_label(r.arch, r.dataset, r.seed), (r.cell_id,))
                for r in rows.itertuples()], ""
    groups: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for r in rows.itertuples():
        groups.setdefault((r.arch, r.dataset), []).append((r.cell_id, int(r.seed)))
    shown = list(groups.items())[:MAX_PANELS]
    out = [Panel(f"{a}/{d}", f"{a} / {d} ({len(cells)} cells)", tuple(c for c, _ in cells)) for (a, d), cells in shown]
    note = (f"{len(rows)} cells: one panel per architecture x dataset"
            + (f", the first {len(shown)} of {len(groups)}" if len(groups) > len(shown) else "")
            + ", pooling its cells (seeds)")
    return out, note


def _rows_of(frame: pd.DataFrame, key: str, members: dict[str, Sequence[str]] | None) -> pd.DataFrame:
    """A panel's rows: its cell's (`key` a cell id), or those of the cells pooled in it."""
    cells = members.get(key, (key,)) if members else (key,)
    return frame[frame.cell_id == cells[0]] if len(cells) == 1 else frame[frame.cell_id.isin(cells)]


def similarity_groups_figure(panels: list[Panel], cells: dict[str, CellData], path: Path, note: str) -> Path:
    """`similarity.png` of pooled panels: each bar the mean over the group's cells, the whiskers their range."""
    fig, axes = _grid(len(panels), 4.2, 3.6)
    names = ["original-original", "generated-generated", "original-generated"]
    colours = [METHOD_STYLE["original"][1], METHOD_STYLE["p-diff"][1], "#9467bd"]
    for ax, panel in zip(axes, panels):
        values = np.array([[cells[c].similarity.get(n, np.nan) for n in names] for c in panel.cells
                           if cells[c].similarity], dtype=float).reshape(-1, 3)
        usable = ~np.isnan(values).all(axis=0)
        if not len(values) or not usable.any():
            _message(ax, "no cell with similarity numbers in this group", panel.label)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an all-NaN column: no bar
            mean, lo, hi = np.nanmean(values, 0), np.nanmin(values, 0), np.nanmax(values, 0)
        mean, lo, hi = (np.where(np.isnan(a), 0.0, a) for a in (mean, lo, hi))
        ax.bar(range(3), mean, color=colours, yerr=[mean - lo, hi - mean], capsize=4, ecolor="#333333")
        for j, v in enumerate(mean):
            ax.text(j, hi[j] + 0.03, f"{v:.3f}" if usable[j] else "n/a", ha="center", fontsize=9)
        collapsed = sum(cells[c].collapsed("p-diff") for c in panel.cells)
        if collapsed:
            ax.text(1, 1.1, f"{collapsed} COLLAPSED", ha="center", fontsize=8, fontweight="bold", color=colours[1])
        ax.set_xticks(range(3), ["orig-orig", "gen-gen", "orig-gen"])
        ax.set_ylim(0, 1.2)
        ax.set_ylabel(f"mean IoU over {len(values)} cells (whiskers: range)", fontsize=8)
        ax.set_title(panel.label, fontsize=10)
    fig.text(0.5, 0.005, note, ha="center", fontsize=8, color="#444444")
    return _save(fig, path, FIGURES[path.name][0])


def accuracy_novelty_groups_figure(panels: list[Panel], cells: dict[str, CellData], path: Path, note: str) -> Path:
    """`accuracy_novelty.png` of pooled panels: one point per cell and method (its models' mean test max-IoU and
    mean test accuracy), large outlined markers the means over the group's cells."""
    fig, axes = _grid(len(panels), 5.0, 4.0)
    for i, (ax, panel) in enumerate(zip(axes, panels)):
        points: dict[str, list[tuple[float, float]]] = {}
        for c in (cells[c] for c in panel.cells):
            if c.snapshot_max_iou is not None and len(c.snapshot_rows):
                points.setdefault("original", []).append((float(np.mean(c.snapshot_max_iou)),
                                                          100 * float(c.snapshot_rows.test_acc.mean())))
            best = c.best_generated
            if len(best):
                points.setdefault("p-diff", []).append((float(best.test_max_iou.mean()), 100 * float(best.test_acc.mean())))
            for method, rows in c.baselines.groupby("method") if len(c.baselines) else ():
                points.setdefault(method, []).append((float(rows.test_max_iou.mean()), 100 * float(rows.test_acc.mean())))
        if not points:
            _message(ax, "no models to plot", panel.label)
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
    return _save(fig, path, FIGURES[path.name][0])


# -- the sweep's figures -----------------------------------------------------


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
    its own best-so-far line."""
    cells = list(labels)
    fig, axes = _grid(len(cells), 4.6, 3.4)
    if not cells:
        _message(axes[0], "no cells in this sweep")
    for ax, cell in zip(axes, cells):
        t = _rows_of(trials, cell, members)
        done = t[t.status == "completed"]
        if t.empty:
            _message(ax, "no trials yet", labels[cell])
            continue
        ax.plot(done.order, done.val_acc, "o", color=METHOD_STYLE["p-diff"][1], label="completed trial")
        if "collapsed" in done:  # a ring and an X: its generated models are (nearly) one model
            flagged = done[done.collapsed.map(lambda v: v is not None and v is not pd.NA
                                              and not (isinstance(v, float) and math.isnan(v)) and bool(v))]
            if len(flagged):
                ax.plot(flagged.order, flagged.val_acc, "o", ms=12, mfc="none", mec="black", mew=1.5)
                ax.plot(flagged.order, flagged.val_acc, "x", ms=7, color="black", mew=1.5,
                        label=f"collapsed ({len(flagged)} of {len(done)})")
        rest = t[(t.status != "completed") & t.val_acc.notna()]
        if len(rest):
            ax.plot(rest.order, rest.val_acc, "x", color="#777777", label="stopped / failed")
        pooled = done.cell_id.nunique() > 1 if "cell_id" in done else False
        for i, (_, one) in enumerate(done.groupby("cell_id") if pooled else [(cell, done)]):
            if len(one):
                ax.step(one.order, one.val_acc.cummax(), where="post", color="black", lw=0.6 if pooled else 1.2,
                        alpha=0.35 if pooled else 1.0,
                        label=None if i else "best so far" + (" (each cell)" if pooled else ""))
        ax.set_xlabel("trial (completion order" + (" in its cell)" if pooled else ")"))
        ax.set_ylabel("val accuracy (%)")
        ax.set_xticks(sorted(set(t.order)))
        ax.set_title(labels[cell], fontsize=10)
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    fig.text(0.5, 0.005, f"order: {how}", ha="center", fontsize=8, color="#444444")
    return _save(fig, path, FIGURES[path.name][0])


def parallel_figure(trials: pd.DataFrame, knobs: list[str], labels: dict[str, str], path: Path,
                    members: dict[str, Sequence[str]] | None = None) -> Path:
    cells = list(labels)
    fig, axes = _grid(len(cells), max(4.6, 1.3 * (len(knobs) + 1)), 3.8, ncols=min(len(cells), 2) or 1)
    if not cells:
        _message(axes[0], "no cells in this sweep")
    done = trials[trials.status == "completed"] if len(trials) else trials
    # Each knob's axis spans its range over the whole sweep, so the cells' panels compare.
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

    def position(k: str, v: Any) -> float:
        kind, lo, hi, choices = scales[k]
        v = _hashable(v)
        if kind == "choice":
            x = choices.index(v)
        else:
            x = math.log10(v) if kind == "log" else float(v)
        return 0.5 if hi == lo else (x - lo) / (hi - lo)

    cmap = matplotlib.colormaps["viridis"]
    for ax, cell in zip(axes, cells):
        t = _rows_of(done, cell, members)
        if not knobs:
            _message(ax, "no knob varies across this sweep's trials: nothing to compare", labels[cell])
            continue
        if t.empty or t.val_acc.isna().all():
            _message(ax, "no completed trials in this cell", labels[cell])
            continue
        # val accuracy (last axis, colour) spans the cell's own range: cells differ in level.
        lo_acc, hi_acc = float(t.val_acc.min()), float(t.val_acc.max())
        norm = matplotlib.colors.Normalize(vmin=lo_acc - 0.5 * (hi_acc == lo_acc), vmax=hi_acc + 0.5 * (hi_acc == lo_acc))
        axis_names = knobs + ["val_acc"]
        lines = []
        for row in t.sort_values("val_acc").itertuples():
            ys = [position(k, getattr(row, k)) for k in knobs]
            ys.append(0.5 if hi_acc == lo_acc else (row.val_acc - lo_acc) / (hi_acc - lo_acc))
            lines.append((ys, cmap(norm(row.val_acc))))
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
            if k == "val_acc":
                lo_txt, hi_txt = f"{lo_acc:.2f}", f"{hi_acc:.2f}"
            else:
                kind, lo, hi, choices = scales[k]
                if kind == "choice":
                    lo_txt, hi_txt = str(choices[0]), str(choices[-1])
                elif kind == "log":
                    lo_txt, hi_txt = f"{10 ** lo:.3g}", f"{10 ** hi:.3g}"
                else:
                    lo_txt, hi_txt = f"{lo:.3g}", f"{hi:.3g}"
            ax.text(j, -0.06, lo_txt, ha="center", va="top", fontsize=7)
            ax.text(j, 1.06, hi_txt, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(axis_names)),
                      [k + (" (log)" if k in scales and scales[k][0] == "log" else "") for k in axis_names],
                      fontsize=8, rotation=20)
        ax.set_yticks([])
        ax.set_ylim(-0.15, 1.15)
        ax.set_xlim(-0.3, len(axis_names) - 0.7)
        ax.set_title(labels[cell], fontsize=10, pad=14)
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="val accuracy (%)",
                     fraction=0.04, pad=0.02)
    return _save(fig, path, FIGURES[path.name][0])


def cell_importance(trials: pd.DataFrame, knobs: list[str], *, n_trees: int = 64
                    ) -> tuple[dict[str, float] | None, str | None]:
    """fANOVA importances of the knobs for val_acc in one cell's completed trials, or why there are none."""
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    from optuna.trial import create_trial

    done = trials[(trials.status == "completed") & trials.val_acc.notna()]
    if len(done) < 2:
        return None, f"{len(done)} completed trial(s): fANOVA needs at least 2"
    varying = [k for k in knobs if done[k].map(_hashable).nunique() > 1]
    if not varying:
        return None, "no knob varies across this cell's completed trials"
    if done.val_acc.nunique() < 2:
        return None, f"every completed trial has the same val accuracy ({done.val_acc.iloc[0]:.2f}%): " \
                     "nothing for the knobs to explain"
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
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for i, acc in enumerate(done.val_acc.to_numpy(dtype=float)):
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
    fig, axes = _grid(len(cells), 4.6, 3.2)
    if not cells:
        _message(axes[0], "no cells in this sweep")
    for ax, cell in zip(axes, cells):
        t = _rows_of(trials, cell, members)
        done = int((t.status == "completed").sum()) if len(t) else 0
        if done > IMPORTANCE_TRIALS:  # a pooled panel: fANOVA's forest grows with the trials (29 s for 1,200)
            t = t[t.status == "completed"].sample(IMPORTANCE_TRIALS, random_state=0)
        pooled = bool(members) and len(members.get(cell, ())) > 1  # 16 trees, not 64: 2 s -> 0.2 s a panel
        importances, why = (cell_importance(t, knobs, **({"n_trees": 16} if pooled else {})) if len(t)
                            else (None, "no trials yet"))
        if importances is None:
            _message(ax, f"no importance: {why}", labels[cell])
            continue
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="#4c72b0")
        for j, n in enumerate(names):
            ax.text(importances[n] + 0.01, j, f"{importances[n]:.2f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.15)
        ax.set_xlabel("importance for val accuracy (fANOVA)")
        used = f"{IMPORTANCE_TRIALS} of {done}" if done > IMPORTANCE_TRIALS else f"{done}"
        ax.set_title(f"{labels[cell]} ({used} trials)", fontsize=10)
    return _save(fig, path, FIGURES[path.name][0])


def draw_all(store: Store, out: Path, best_trials: dict[str, str | None], knobs: list[str] | None = None,
             log: Callable[[str], None] = lambda s: None) -> tuple[dict[str, Path], str, list[CellData]]:
    """Draw every figure of FIGURES into `out`; returns their paths, how trials were ordered, and the cells.

    `best_trials`: the val-selected trial of each cell; `knobs`: the searched knobs (default: those that vary).
    """
    import time

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
    steps = {
        "similarity.png": (lambda p: similarity_groups_figure(panels, by_id, p, note)) if pooled else
        (lambda p: similarity_figure(cells, p)),
        "accuracy_novelty.png": (lambda p: accuracy_novelty_groups_figure(panels, by_id, p, note)) if pooled else
        (lambda p: accuracy_novelty_figure(cells, p)),
        "tsne.png": lambda p: tsne_figure(first, p, note and note + "; t-SNE: the first cell (seed) of each"),
        "search_history.png": lambda p: history_figure(trials, how, labels, p, members),
        "parallel_coordinates.png": lambda p: parallel_figure(trials, knobs, labels, p, members),
        "importance.png": lambda p: importance_figure(trials, knobs, labels, p, members),
    }
    for name, draw in steps.items():
        t = time.perf_counter()
        paths[name] = draw(out / name)
        log(f"{name} ({time.perf_counter() - t:.1f}s)")
    return paths, how, cells

