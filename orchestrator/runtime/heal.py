"""Self-healing tables: before stage 1, reconcile what each table should hold with what it holds.

Run on every (non-dry) run of a sweep, before any work:

- An unreadable Parquet file anywhere in a table is moved to `<sweep>/quarantine/`
  (never deleted), with a line saying so; whatever it held is rebuilt below.
- A cell of the spec whose `sources` row is there but whose `checkpoints` rows
  (K of them) or model files (`orchestrator.store.paths.source_files`: `models/<cell>.pt`,
  `models/<cell>.snapshot_scores.pt`)
  are missing or corrupt is rebuilt from stage 1: its `sources` row (the commit
  marker) goes to quarantine, so stage 1 re-runs the cell.
- A cell about to be re-run by stage 1 has its trials, generated and baselines
  files moved to quarantine: they were built from the old snapshots.
- A completed trial whose `generated` rows are missing (or not N of them), or whose
  generator file (`models/trials/<cell>/<trial>.pt`, what `generate` samples from) is
  missing or does not load, is re-run: its `trials` row (its commit marker) goes to
  quarantine (with its generated rows and an unloadable generator file).
- A baselines file with the wrong number of rows goes to quarantine and is re-run;
  a missing one is re-run anyway (stage 2 runs every cell without one).

Cells not in the spec (an earlier version of it) are left alone, except that
their unreadable files are quarantined too (one such file breaks every read of
its table).
"""

from __future__ import annotations

import io
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from orchestrator.spec import Cell, SweepSpec
from orchestrator.store import paths
from orchestrator.store.errors import storage_fault
from orchestrator.store.layout import COMPACT_PREFIX
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store
from pdiff.baselines import BASELINES

__all__ = ["ModelFileError", "read_model", "reconcile"]

_DEPENDENTS = ("trials", "generated", "baselines", "curves")  # built from a cell's snapshots


def _rows(store: Store, path: str) -> int | None:
    """Rows in a Parquet file per its footer; None when it cannot be read."""
    try:
        return pq.read_metadata(path, filesystem=store.fs).num_rows
    except (pa.ArrowException, OSError, ValueError):
        return None


def _read(store: Store, path: str) -> list[dict] | None:
    """A writer's rows (its small file, or its rows in a compacted file); None when they cannot be read."""
    return store.read_writer(path)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1].removesuffix(".parquet")


class ModelFileError(Exception):
    """A model file of the sweep is missing or does not load; `problem` says which, in a few words."""

    def __init__(self, relpath: str, problem: str):
        super().__init__(f"{relpath} {problem}")
        self.relpath, self.problem = relpath, problem


def read_model(store: Store, relpath: str) -> dict:
    """A model file of the sweep (torch.save of a dict), loaded on the CPU. Raises ModelFileError where it is
    missing, unreadable or corrupt, and a StorageFault where the storage failed (a fault, not a verdict)."""
    try:
        payload = store.read_bytes(relpath)
    except FileNotFoundError:
        raise ModelFileError(relpath, "missing") from None
    except OSError as err:
        if storage_fault(err) is not None:
            raise storage_fault(err) from err
        raise ModelFileError(relpath, f"unreadable ({' '.join(str(err).split())[:120]})") from None
    try:
        obj = torch.load(io.BytesIO(payload), map_location="cpu")
    except Exception as err:  # truncated zip, not a torch file, bad pickle: all mean "corrupt"
        raise ModelFileError(relpath, f"corrupt ({type(err).__name__}: "
                                      f"{str(err).splitlines()[0][:120] if str(err) else ''})") from None
    if not isinstance(obj, dict) or not obj:
        raise ModelFileError(relpath, "corrupt (not a dict of tensors)")
    return obj


def _model_problem(store: Store, relpath: str) -> str | None:
    """What is wrong with a model file (missing, unreadable, corrupt), or None when it loads."""
    try:
        read_model(store, relpath)
    except ModelFileError as err:
        return err.problem
    return None


def _model_file_problems(store: Store, cell_id: str) -> dict[str, str]:
    """{relpath: what is wrong} for a finished cell's model files (weights, snapshot scores)
    that are missing or do not load; empty when both are sound."""
    return {relpath: problem for relpath in paths.source_files(cell_id)
            if (problem := _model_problem(store, relpath)) is not None}


class _Healing:
    """One reconciliation of a sweep's tables with its spec: what each table holds, and the lines said."""

    def __init__(self, spec: SweepSpec, store: Store, say: Callable[[str], None]):
        self.spec, self.store, self.say = spec, store, say
        self.said: list[str] = []
        self.rows: dict[str, dict[str, int]] = {t: {} for t in TABLES}  # table -> path -> rows
        self.lost_trials: set[str] = set()  # trials files quarantined here: their generated files go too
        self.ours = {c.cell_id for c in spec.cells}

    def tell(self, line: str) -> None:
        self.said.append(line)
        self.say(line)

    def move(self, path: str, reason: str) -> None:
        self.store.quarantine(path, reason)

    def rel(self, path: str) -> str:
        return path[len(self.store.root) + 1:]

    def cell_files(self, table: str, cell_id: str) -> dict[str, int]:
        prefix = self.store.path(table, cell_id) + "/"
        return {p: n for p, n in self.rows[table].items() if p.startswith(prefix)}

    def unreadable(self, table: str, path: str) -> None:
        target = self.store.quarantine(path, "not a readable Parquet file")
        self.rows[table].pop(path, None)
        cell_id = path[len(self.store.path(table)) + 1:].split("/", 1)[0]
        self.tell(f"heal: {self.rel(path)} is not a readable Parquet file: moved to {self.rel(target)}"
                  + ("; its rows are rebuilt" if cell_id in self.ours
                     else " (a cell no longer in the spec: not rebuilt)"))
        if table == "trials":
            self.lost_trials.add(path)

    def quarantine_unreadable(self) -> None:
        """1. Unreadable files, every table, every cell; then each writer's rows, as readers see them."""
        for table in TABLES:
            for path in self.store.all_files(table):  # compacted files and the writer files beside them too
                if _rows(self.store, path) is None:
                    self.unreadable(table, path)
            # Each writer's rows, in its own file or in its cell's compacted file (Store.writer_rows: the path
            # its file had; quarantine moves those rows aside as a file of their own).
            self.rows[table] = self.store.writer_rows(table)

    def finished_source(self, cell: Cell) -> dict | None:
        """2. The cell's `sources` row where the cell is finished and its snapshots and model files are sound;
        else None, with a cell to rebuild from stage 1 moved aside."""
        cid = cell.cell_id
        sources = self.cell_files("sources", cid)
        source = None
        if sources:
            path = next(iter(sources))
            read = _read(self.store, path)
            if read is None:
                self.unreadable("sources", path)
                sources = {}
            elif len(read) == 1 and len(sources) == 1:
                source = read[0]
        if source is not None:
            return self._sound_source(cell, sources, source)
        if sources:  # a sources file with other than one row
            for path in sources:
                self.move(path, "sources file with other than one row")
            self.tell(f"heal: cell {cid}: its sources file does not hold one row: rebuilding it from stage 1")
        return None

    def _sound_source(self, cell: Cell, sources: dict[str, int], source: dict) -> dict | None:
        """`source` where the finished cell's snapshots and model files are sound; else None, the cell moved aside."""
        cid = cell.cell_id
        problems = []
        k = int(source.get("k") or cell.collect.k)
        have = sum(self.cell_files("checkpoints", cid).values())
        if have != k:
            problems.append(f"checkpoints hold {have} of {k} rows")
        model_problems = _model_file_problems(self.store, cid)
        problems += [f"{relpath} {what}" for relpath, what in model_problems.items()]
        if not problems:
            return source
        why = "; ".join(problems)
        self.tell(f"heal: cell {cid}: {why}: rebuilding it from stage 1")
        for path in sources:
            self.move(path, f"cell rebuilt from stage 1: {why}")
        for path in self.cell_files("checkpoints", cid):
            self.move(path, f"cell rebuilt from stage 1: {why}")
        for relpath, what in model_problems.items():
            if what != "missing":
                self.move(self.store.path(relpath), f"{what}; cell rebuilt from stage 1")
        return None

    def quarantine_stale(self, cid: str) -> None:
        """3. Work built from the snapshots of a cell that stage 1 will (re)train is stale."""
        # Whole folders: compacted files first (then a writer file beside one is just a file).
        stale = [p for t in _DEPENDENTS for p in sorted(self.store.all_files(t, cid),
                                                        key=lambda p: (COMPACT_PREFIX not in p, p))]
        if stale:
            self.tell(f"heal: cell {cid}: stage 1 will train it again, so its {len(stale)} trials / generated / "
                      f"baselines / curves files (built from the old snapshots) go to quarantine and are rebuilt")
            for path in stale:
                self.move(path, "built from the snapshots of a source that is being rebuilt")

    def check_trials(self, cid: str, per_method: int) -> None:
        """4. Completed trials need their generated rows and their generator file."""
        generated = self.cell_files("generated", cid)
        for path in self.lost_trials:
            gen_path = path.replace(self.store.path("trials") + "/", self.store.path("generated") + "/", 1)
            if gen_path in generated:
                self.move(gen_path, "its trials row was unreadable: the trial is run again")
        for path, n in self.cell_files("trials", cid).items():
            tid = _name(path)
            gen_path = self.store.path("generated", cid, f"{tid}.parquet")
            read = _read(self.store, path) if n == 1 else None
            if n == 1 and read is None:
                self.unreadable("trials", path)
                if gen_path in generated:
                    self.move(gen_path, "its trials row was unreadable: the trial is run again")
                continue
            why = (f"its trials file holds {n} rows" if n != 1 else
                   self._trial_problem(cid, tid, read[0], generated.get(gen_path), per_method))
            if why is None:
                continue
            self.tell(f"heal: trial {tid} of cell {cid}: {why}: its trials row goes to quarantine and a new "
                      f"trial takes its place")
            self.move(path, f"trial re-run: {why}")
            if gen_path in generated:
                self.move(gen_path, f"trial re-run: {why}")

    def _trial_problem(self, cid: str, tid: str, row: dict, got: int | None, per_method: int) -> str | None:
        """Why a completed trial is re-run (its generated rows, its generator file), or None: it stands."""
        if row.get("status") != "completed":
            return None
        want = row.get("n_generated") or per_method
        model = paths.trial_model(cid, tid)
        if got != want:
            return "no generated file" if got is None else f"generated holds {got} of {want} rows"
        problem = _model_problem(self.store, model)
        if problem is None:
            return None
        why = f"its generator {model} is {problem}"
        if problem != "missing":
            self.move(self.store.path(model), f"trial re-run: {why}")
        return why

    def check_baselines(self, cid: str, want: int) -> None:
        """5. Baselines: all methods, N each, in one file."""
        for path, n in self.cell_files("baselines", cid).items():
            if n != want:
                self.tell(f"heal: baselines of cell {cid}: {n} of {want} rows: running them again")
                self.move(path, f"baselines re-run: {n} of {want} rows")


def reconcile(spec: SweepSpec, store: Store, say: Callable[[str], None] = print) -> list[str]:
    """Quarantine what is corrupt or stale so that the stages rebuild it; returns the lines said."""
    healing = _Healing(spec, store, say)
    healing.quarantine_unreadable()
    per_method = spec.pdiff_config({}).n_generated
    for cell in spec.cells:
        if healing.finished_source(cell) is None:
            healing.quarantine_stale(cell.cell_id)
            continue
        healing.check_trials(cell.cell_id, per_method)
        if spec.baselines:
            healing.check_baselines(cell.cell_id, len(BASELINES) * per_method)
    return healing.said
