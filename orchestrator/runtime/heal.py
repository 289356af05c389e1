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

from orchestrator.spec import SweepSpec
from orchestrator.store import paths
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import COMPACT_PREFIX, Store, storage_fault
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


def reconcile(spec: SweepSpec, store: Store, say: Callable[[str], None] = print) -> list[str]:
    """Quarantine what is corrupt or stale so that the stages rebuild it; returns the lines said."""
    said: list[str] = []

    def tell(line: str) -> None:
        said.append(line)
        say(line)

    def move(path: str, reason: str) -> None:
        store.quarantine(path, reason)

    rel = lambda path: path[len(store.root) + 1:]  # noqa: E731

    # 1. Unreadable files, every table, every cell.
    rows: dict[str, dict[str, int]] = {t: {} for t in TABLES}  # table -> path -> rows
    lost_trials: set[str] = set()  # trials files quarantined here: their generated files go too
    ours = {c.cell_id for c in spec.cells}

    def unreadable(table: str, path: str) -> None:
        target = store.quarantine(path, "not a readable Parquet file")
        rows[table].pop(path, None)
        cell_id = path[len(store.path(table)) + 1:].split("/", 1)[0]
        tell(f"heal: {rel(path)} is not a readable Parquet file: moved to {rel(target)}"
             + ("; its rows are rebuilt" if cell_id in ours else " (a cell no longer in the spec: not rebuilt)"))
        if table == "trials":
            lost_trials.add(path)

    for table in TABLES:
        for path in store.all_files(table):  # compacted files and the writer files beside them too
            if _rows(store, path) is None:
                unreadable(table, path)
        # Each writer's rows, in its own file or in its cell's compacted file (tables.Store.writer_rows: the path
        # its file had; quarantine moves those rows aside as a file of their own).
        rows[table] = store.writer_rows(table)

    def cell_files(table: str, cell_id: str) -> dict[str, int]:
        prefix = store.path(table, cell_id) + "/"
        return {p: n for p, n in rows[table].items() if p.startswith(prefix)}

    per_method = spec.pdiff_config({}).n_generated
    for cell in spec.cells:
        cid = cell.cell_id
        sources = cell_files("sources", cid)
        source = None
        if sources:
            path = next(iter(sources))
            read = _read(store, path)
            if read is None:
                unreadable("sources", path)
                sources = {}
            elif len(read) == 1 and len(sources) == 1:
                source = read[0]

        # 2. A finished cell's snapshots and model files.
        if source is not None:
            problems = []
            k = int(source.get("k") or cell.collect.k)
            have = sum(cell_files("checkpoints", cid).values())
            if have != k:
                problems.append(f"checkpoints hold {have} of {k} rows")
            model_problems = _model_file_problems(store, cid)
            problems += [f"{relpath} {what}" for relpath, what in model_problems.items()]
            if problems:
                why = "; ".join(problems)
                tell(f"heal: cell {cid}: {why}: rebuilding it from stage 1")
                for path in sources:
                    move(path, f"cell rebuilt from stage 1: {why}")
                for path in cell_files("checkpoints", cid):
                    move(path, f"cell rebuilt from stage 1: {why}")
                for relpath, what in model_problems.items():
                    if what != "missing":
                        move(store.path(relpath), f"{what}; cell rebuilt from stage 1")
                source = None
        elif sources:  # a sources file with other than one row
            for path in sources:
                move(path, "sources file with other than one row")
            tell(f"heal: cell {cid}: its sources file does not hold one row: rebuilding it from stage 1")

        # 3. Work built from the snapshots of a cell that stage 1 will (re)train is stale.
        if source is None:
            # Whole folders: compacted files first (then a writer file beside one is just a file).
            stale = [p for t in _DEPENDENTS for p in sorted(store.all_files(t, cid),
                                                            key=lambda p: (COMPACT_PREFIX not in p, p))]
            if stale:
                tell(f"heal: cell {cid}: stage 1 will train it again, so its {len(stale)} trials / generated / "
                     f"baselines / curves files (built from the old snapshots) go to quarantine and are rebuilt")
                for path in stale:
                    move(path, "built from the snapshots of a source that is being rebuilt")
            continue

        # 4. Completed trials need their generated rows and their generator file.
        generated = cell_files("generated", cid)
        for path in lost_trials:
            gen_path = path.replace(store.path("trials") + "/", store.path("generated") + "/", 1)
            if gen_path in generated:
                move(gen_path, "its trials row was unreadable: the trial is run again")
        for path, n in cell_files("trials", cid).items():
            tid = _name(path)
            gen_path = store.path("generated", cid, f"{tid}.parquet")
            read = _read(store, path) if n == 1 else None
            if n == 1 and read is None:
                unreadable("trials", path)
                if gen_path in generated:
                    move(gen_path, "its trials row was unreadable: the trial is run again")
                continue
            if n != 1:
                why = f"its trials file holds {n} rows"
            else:
                row = read[0]
                if row.get("status") != "completed":
                    continue
                want = row.get("n_generated") or per_method
                got = generated.get(gen_path)
                model = paths.trial_model(cid, tid)
                if got != want:
                    why = "no generated file" if got is None else f"generated holds {got} of {want} rows"
                elif (problem := _model_problem(store, model)) is not None:
                    why = f"its generator {model} is {problem}"
                    if problem != "missing":
                        move(store.path(model), f"trial re-run: {why}")
                else:
                    continue
            tell(f"heal: trial {tid} of cell {cid}: {why}: its trials row goes to quarantine and a new "
                 f"trial takes its place")
            move(path, f"trial re-run: {why}")
            if gen_path in generated:
                move(gen_path, f"trial re-run: {why}")

        # 5. Baselines: all methods, N each, in one file.
        if spec.baselines:
            want = len(BASELINES) * per_method
            for path, n in cell_files("baselines", cid).items():
                if n != want:
                    tell(f"heal: baselines of cell {cid}: {n} of {want} rows: running them again")
                    move(path, f"baselines re-run: {n} of {want} rows")
    return said
