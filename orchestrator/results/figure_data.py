"""What the report's figures draw, read from a sweep's tables: each cell's models (`CellData`, `load_cells`)
and every trial in its cell's search order (`trial_history`).

Everything comes from the tables alone: each model's wrong-prediction set on the test split is stored with it
(`test_wrong`, packed bits, `pdiff.evaluate.pack_wrong`), so similarity, IoU matrices, the snapshots' max IoU
to each other and their accuracies are computed from the tables (`pdiff.evaluate.iou_matrix`). No network is
built and no stage module is imported. The collapse flags are the stored ones (`collapsed`, `family_collapsed`);
the snapshots', which no table stores, is `pdiff.verdicts.is_collapsed` of their stored pairwise IoU.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from orchestrator.console import cell_label
from orchestrator.results.sql import methods
from orchestrator.results.trust import is_flagged, is_known
from orchestrator.store.layout import HIDDEN, WRITER, WRITTEN
from orchestrator.store.tables import Store
from pdiff.verdicts import is_collapsed

__all__ = ["CellData", "SIGNALS", "SEARCH_ORDER", "family_max_iou", "load_cells", "loo_max_iou", "trial_history"]

SIGNALS = ("pairwise_iou", "distinct_sets", "spread_ratio", "collapsed")  # a family's collapse signals


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
    snapshot_loo_val: float | None = None  # sources.snapshot_loo_val_max_iou (None: tables before it)

    @property
    def label(self) -> str:
        return cell_label(self.arch, self.dataset, self.seed)

    def collapsed(self, method: str) -> bool:
        """Whether a family is flagged collapsed in the tables (unknown counts as not)."""
        return is_flagged(self.families.get(method, {}).get("collapsed"))

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
    completed: dict[str, dict[str, dict[str, Any]]] = {}
    for r in trials.to_dict("records"):
        if r["status"] == "completed":
            completed.setdefault(r["cell_id"], {})[r["trial_id"]] = r
    wanted = set(sources.cell_id) if vectors is None else set(vectors)
    snapshots = _by_cell(store.read_pandas("checkpoints", columns=["cell_id", "index", "val_acc", "test_acc",
                                                                   "test_wrong"]))
    generated = _by_cell(_generated(store, best_trials))
    baselines = _by_cell(store.read_pandas("baselines", heavy=["test_wrong"]))
    cells = []
    for row in sources.itertuples():
        snaps = snapshots.get(row.cell_id, pd.DataFrame(columns=["index", "val_acc", "test_acc", "test_wrong"]))
        snaps = snaps.sort_values("index").reset_index(drop=True)
        cell = _cell(row, best_trials.get(row.cell_id), snaps, generated.get(row.cell_id),
                     baselines.get(row.cell_id), completed.get(row.cell_id, {}))
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


def _by_cell(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """A table's rows per cell id. Sorted once, then sliced: a `take` per cell on 400-chunk Arrow columns took
    seconds."""
    frame = frame.sort_values("cell_id", kind="stable").reset_index(drop=True)
    ids = frame.cell_id.to_numpy(dtype=object)
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.array([], int)
    ends = np.r_[starts[1:], len(ids)]
    return {ids[a]: frame.iloc[a:b] for a, b in zip(starts, ends)}


def _generated(store: Store, best_trials: dict[str, str | None]) -> pd.DataFrame:
    """Every generated row without its vector; the packed wrong-prediction sets of the val-selected trials'
    models only (the others' are most of the rows)."""
    gen = store.read_pandas("generated", columns=["cell_id", "trial_id", "index", "val_acc", "test_acc",
                                                  "test_max_iou"], writers=True)
    gen["trial_id"] = gen.trial_id.fillna(gen[WRITER])
    chosen = sorted({t for t in best_trials.values() if isinstance(t, str)})
    sets = store.read_pandas("generated", columns=["cell_id", "trial_id", "index", "test_wrong"], writers=True,
                             where=pc.field("trial_id").isin(chosen) | pc.field("trial_id").is_null())
    sets["trial_id"] = sets.trial_id.fillna(sets[WRITER])
    return gen.drop(columns=list(HIDDEN)).merge(sets.drop(columns=list(HIDDEN)), how="left",
                                                on=["cell_id", "trial_id", "index"])


_GENERATED = ["trial_id", "index", "val_acc", "test_acc", "test_max_iou", "test_wrong"]
_BASELINES = ["method", "index", "val_acc", "test_acc", "test_max_iou", "val_max_iou", "test_wrong"]


def _cell(source, best_trial: str | None, snaps: pd.DataFrame, generated: pd.DataFrame | None,
          baselines: pd.DataFrame | None, completed: dict[str, dict[str, Any]]) -> CellData:
    """One cell's CellData, without vectors or similarity: its completed trials' generated rows alone."""
    if generated is None:
        generated = pd.DataFrame(columns=_GENERATED)
    if baselines is None:
        baselines = pd.DataFrame(columns=[c for c in _BASELINES if c != "val_acc"])
    cell = CellData(cell_id=source.cell_id, arch=source.arch, dataset=source.dataset, seed=int(source.seed),
                    best_trial=best_trial, snapshots=np.zeros((0, 0), np.float32),
                    snapshot_rows=snaps.drop(columns=["test_wrong"]), generated=generated[_GENERATED],
                    baselines=baselines)
    loo_val = getattr(source, "snapshot_loo_val_max_iou", None)
    cell.snapshot_loo_val = float(loo_val) if is_known(loo_val) else None
    _families(cell, source._asdict(), completed)
    cell.baselines = cell.baselines[[c for c in _BASELINES if c in cell.baselines]]
    keep = cell.generated.trial_id.isin(set(completed)).to_numpy(dtype=bool)
    cell.generated = cell.generated[keep].reset_index(drop=True)  # an array: `df[[]]` would drop the columns
    return cell


@contextlib.contextmanager
def _one_thread():
    """One torch thread for the tiny IoU matrices: on a busy machine, threads meeting at every op's barrier
    made them 100x slower (30 ms for a 50 x 50 matrix)."""
    import torch  # seconds to import: only where similarity is computed (not `predictions=False`)

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


def _families(cell: CellData, source: dict[str, Any], completed: dict[str, dict[str, Any]]) -> None:
    """The collapse signals the tables hold for each of the cell's families (see CellData.families);
    `completed`: the cell's completed trials rows by trial id."""
    iou = source.get("snapshot_pairwise_iou")
    if is_known(iou):  # the snapshots' spread ratio is 1 by definition: their flag is the pairwise IoU's
        cell.families["original"] = {"pairwise_iou": iou, "distinct_sets": source.get("snapshot_distinct_sets"),
                                     "spread_ratio": 1.0, "collapsed": is_collapsed(iou, 1.0)}
    cell.collapsed_trials |= {t for t, row in completed.items() if is_flagged(row.get("collapsed"))}
    best = completed.get(cell.best_trial)
    if best is not None and is_known(best.get("pairwise_iou")):
        cell.families["p-diff"] = {k: best.get(k) for k in SIGNALS}
    b = cell.baselines
    if "family_pairwise_iou" in b:
        for first in b.drop_duplicates("method").to_dict("records"):  # a family's signals are on every row
            if is_known(first.get("family_pairwise_iou")):
                cell.families[first["method"]] = {k: first.get(f"family_{k}") for k in SIGNALS}


def _recompute(source, test_wrong: pd.Series, cell: CellData) -> None:
    """The cell's similarity numbers from the wrong-prediction sets stored in the tables (packed bits,
    pdiff.evaluate.pack_wrong): no network is built and nothing is scored again."""
    import torch  # seconds to import (as pdiff.evaluate, which needs it): only where similarity is computed

    from pdiff.evaluate import iou_matrix, unpack_wrong_rows

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

    def mean_off_diagonal(iou: torch.Tensor) -> float:
        k = len(iou)
        return float(iou[~torch.eye(k, dtype=torch.bool)].mean()) if k > 1 else float("nan")

    snap = unpack(test_wrong)
    cell.recomputed["original"] = accuracy(snap)
    similarity = {"original-original": mean_off_diagonal(iou_matrix(snap, snap))}
    if len(snap) > 1:
        cell.snapshot_max_iou = loo_max_iou(test_wrong, n)
    for method, rows in cell.baselines.groupby("method") if "test_wrong" in cell.baselines else ():
        cell.recomputed[method] = accuracy(unpack(rows.sort_values("index").test_wrong))
    best = cell.best_generated
    if len(best):
        gen = unpack(best.test_wrong)
        cell.recomputed["p-diff"] = accuracy(gen)
        similarity["generated-generated"] = mean_off_diagonal(iou_matrix(gen, gen))
        similarity["original-generated"] = float(iou_matrix(gen, snap).mean())
    cell.similarity = similarity


def loo_max_iou(blobs: Iterable[bytes], n: int) -> np.ndarray:
    """(K,) each model's max IoU of its wrong-prediction set to any *other* model's of its family: for the
    snapshots, their leave-one-out novelty (sources.snapshot_loo_max_iou is its mean); NaN for a family of one.
    Two empty sets: IoU 1, as pdiff.evaluate.iou_matrix. Numpy on the packed bits (pdiff.evaluate.pack_wrong),
    equal to that function's float32 values."""
    blobs, size = list(blobs), (n + 7) // 8
    if any(not isinstance(b, bytes) or len(b) != size for b in blobs):
        raise ValueError(f"a wrong-prediction set is missing or not {size} bytes ({n} examples)")
    if len(blobs) < 2:
        return np.full(len(blobs), np.nan)
    packed = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), size)
    wrong = np.unpackbits(packed, axis=1, count=n, bitorder="big").astype(np.float64)  # counts exact
    inter = wrong @ wrong.T
    count = wrong.sum(1)
    union = count[:, None] + count[None, :] - inter
    # float32 division of the exact counts: the very floats of pdiff.evaluate.max_iou (torch, float32)
    iou = np.where(union > 0, inter.astype(np.float32) / np.maximum(union, 1).astype(np.float32), np.float32(1))
    np.fill_diagonal(iou, -1.0)  # the other models only
    return iou.max(1)


def family_max_iou(cells: Iterable[CellData]) -> list[tuple[str, np.ndarray]]:
    """Per family, every model's test max IoU to the snapshots, pooled over `cells`: the snapshots' to the
    *other* snapshots (leave-one-out, the reference), the val-selected trial's generated models, each
    baseline's models (their stored test_max_iou)."""
    pooled: dict[str, list[np.ndarray]] = {}
    for cell in cells:
        if cell.snapshot_max_iou is not None:
            pooled.setdefault("original", []).append(np.asarray(cell.snapshot_max_iou, dtype=float))
        pooled.setdefault("p-diff", []).append(cell.best_generated.test_max_iou.to_numpy(dtype=float))
        for method in methods():
            rows = cell.baselines[cell.baselines.method == method] if len(cell.baselines) else ()
            pooled.setdefault(method, []).append(rows.test_max_iou.to_numpy(dtype=float) if len(rows) else [])
    families = [(f, np.concatenate(v)) for f, v in pooled.items()]
    return [(f, v[~np.isnan(v)]) for f, v in families if len(v)]


# -- the search's history ----------------------------------------------------------

SEARCH_ORDER = "search order: each trial's stored `trial_index` (the order its cell's search asked for it)"


def trial_history(store: Store) -> tuple[pd.DataFrame, str]:
    """Every trials row with its rank in its cell (`order`, from 1), and how the order was found.

    Each trials row stores `trial_index`, its number in its cell's search. Where rows lack it (tables written
    before it) or repeat it, a trial's completion time stands in: a trial writes its row last, so the
    modification time of its file (`_written_ns`: its own file's, or, once compacted, the file it had) is its
    completion time; where the times cannot tell the trials apart either (e.g. a copied folder), the row order.
    """
    trials = store.read_pandas("trials", writers=True)
    written = trials.pop(WRITTEN)
    trials = trials.drop(columns=[WRITER])
    if trials.empty:
        return trials.assign(completed_at=pd.Series(dtype=float), order=pd.Series(dtype=int)), "no trials"
    trials["row"] = np.arange(len(trials))
    trials["completed_at"] = written.to_numpy()
    keys, how = _order(trials)
    trials = trials.sort_values(["cell_id", *keys, "row"])
    trials["order"] = trials.groupby("cell_id").cumcount() + 1
    return trials.reset_index(drop=True), how


def _order(trials: pd.DataFrame) -> tuple[list[str], str]:
    """The columns that order a cell's trials, and how to say so."""
    if ("trial_index" in trials and trials.trial_index.notna().all()
            and not trials.duplicated(["cell_id", "trial_index"]).any()):
        return ["trial_index"], SEARCH_ORDER
    known = trials.completed_at.notna()
    distinct = trials[known].groupby("cell_id").completed_at.nunique()
    counts = trials[known].groupby("cell_id").size()
    if bool(known.all() and (distinct == counts).all()):
        return ["completed_at"], "completion order: modification time of each trial's `trials` file"
    return [], "trial row order (file modification times cannot tell the trials apart)"
