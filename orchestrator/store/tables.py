"""The Parquet tables of a sweep: `Store`, writing one writer's rows as one atomic file, and reading tables.

`Store` is assembled from the store's parts, each a module of its own:

- `orchestrator.store.folder`: where the sweep lives, atomic writes (`SweepFolder`);
- `orchestrator.store.layout`: which files make a table and how they resolve into rows (`TableFiles`);
- `orchestrator.store.compaction`: merging a folder's writer files into one file (`Compaction`);
- `orchestrator.store.ownership`: the folder's marker, --restart's deletion (`OwnFolder`);
- `orchestrator.store.errors`: what goes wrong (CorruptTable, NotOurFolder, OldTables, StorageFault).

This module adds writing a writer's rows (`write`; `<table>/<cell_id>/<writer_id>.parquet`, deterministic, so a
retried writer replaces its own rows), removing them (`delete`, `quarantine`), and reading tables (`read`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.store.compaction import Compaction
from orchestrator.store.errors import CorruptTable, OldTables
from orchestrator.store.layout import HIDDEN, WRITER, WRITTEN, Layout, stem
from orchestrator.store.ownership import MARKER, OwnFolder
from orchestrator.store.paths import QUARANTINE
from orchestrator.store.schema import HEAVY, RENAMED, SCHEMA_VERSION, TABLES, current, described

__all__ = ["Store"]


def _wanted(column: str, heavy: bool | Iterable[str]) -> bool:
    """Whether `Store.read(heavy=...)` reads a column when no columns are named."""
    if column not in HEAVY or heavy is True:
        return True
    return heavy is not False and column in set(heavy)


@dataclass(frozen=True)
class Store(Compaction, OwnFolder):
    """The results of one sweep: `<storage>/<sweep>/`, on any pyarrow filesystem."""

    # -- writing -------------------------------------------------------------

    def write(self, table: str, cell_id: str | None, writer_id: str, rows: list[dict[str, Any]]) -> str:
        """Write one writer's rows as one immutable file, replacing that writer's previous file. A row of no
        cell (cell_id None, the `runs` table) goes to `<table>/<writer_id>.parquet`."""
        common = {"sweep": self.sweep, "spec_hash": self.spec_hash, "schema_version": SCHEMA_VERSION,
                  "cell_id": cell_id}
        rows = [common | row for row in rows]
        core = TABLES[table]
        extra = sorted({k for row in rows for k in row} - set(core.names))
        old = [c for c in extra if c in RENAMED.get(table, {})]
        if old:  # a new file holds each column under one name: today's
            raise ValueError(f"{table}: columns {', '.join(old)} are stored as "
                             f"{', '.join(RENAMED[table][c] for c in old)} (orchestrator.store.columns.RENAMED)")
        schema = core
        if extra:  # e.g. the knob columns of `trials`, typed from their values
            inferred = pa.Table.from_pylist([{k: row.get(k) for k in extra} for row in rows]).schema
            schema = described(table, pa.unify_schemas([core, inferred]))
        data = pa.Table.from_pylist(rows, schema=schema)
        final = self.path(table, *([cell_id] if cell_id is not None else []), f"{writer_id}.parquet")
        self._put(final, lambda sink: pq.write_table(data, sink, compression="zstd"))
        return final

    def delete(self, table: str, cell_id: str, writer_id: str) -> None:
        """Remove one writer's rows: its file, and, where the folder's compacted file holds rows of it, those
        too (a zero-row file in its place, a tombstone, which compaction absorbs)."""
        path = self.path(table, cell_id, f"{writer_id}.parquet")
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)
        if self._compacted_rows(table, cell_id).get(writer_id):
            self.write(table, cell_id, writer_id, [])

    def quarantine(self, path: str, reason: str) -> str:
        """Move a file of the sweep (a table's, a model's) aside into `<sweep>/quarantine/`, under its
        path relative to the sweep, with `<name>.reason.txt` beside it. Never deletes: a name already
        taken there gets a numbered suffix. Returns the new path."""
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not inside {self.root}")
        base = self.path(QUARANTINE, path[len(prefix):])
        target, n = base, 0
        while self.fs.get_file_info(target).type != pafs.FileType.NotFound:
            n += 1
            target = f"{base}.{n}"
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        # A writer of a compacted folder: its rows there go too (a tombstone), and where it has no file of
        # its own, those rows are what is moved aside, as a file of their own.
        held = self._held(path)
        if held is not None and self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            rows = self._writer_rows_of(held[0], held[1], held[2])
            self._put(target, lambda sink: pq.write_table(rows, sink, compression="zstd"))
        else:
            self.fs.move(path, target)
        if held is not None:
            self.write(held[0], held[1], held[2], [])
        with self.fs.open_output_stream(f"{target}.reason.txt") as out:
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {reason}\n".encode())
        return target

    # -- reading -------------------------------------------------------------

    def read(self, table: str, cell_id: str | None = None, columns: Iterable[str] | None = None, *,
             heavy: bool | Iterable[str] = True, writers: bool = False, where=None) -> pa.Table:
        """One table (or one cell of it) as Arrow; files with added columns are unified.

        `columns`: those only (a column no file has is left out of an empty table); with no `columns`, `heavy`
        says which of the vector and packed-set columns (HEAVY) come too: all (True), none (False), or those
        named (e.g. ["test_wrong"]). `where`: a pyarrow expression the rows must match (pushed
        into the scan). `writers`: also `_writer` (the file
        each row came from: a trial id, `snapshots`, ...) and `_written_ns` (that file's modification time)."""
        hidden = list(HIDDEN) if writers else []
        layout = self.layout(table, cell_id)
        files = layout.reads
        if not files:
            empty = TABLES[table].empty_table()
            if columns is not None:
                empty = empty.select([c for c in columns if c in TABLES[table].names])
            else:
                empty = empty.select([c for c in empty.column_names if _wanted(c, heavy)])
            return empty.append_column(WRITER, pa.array([], pa.string())).append_column(
                WRITTEN, pa.array([], pa.int64())) if writers else empty
        dataset = self._dataset(files)
        schema = dataset.schema
        names = list(columns) if columns else [c for c in schema.names if c not in HIDDEN and _wanted(c, heavy)]
        names = [c for c in names if c not in HIDDEN]
        renamed = RENAMED.get(table, {})
        shown = list(dict.fromkeys(renamed.get(c, c) for c in names))  # the columns asked for, by today's names
        # A renamed column (RENAMED) is read under both names where files of an older sweep hold the old one.
        old = {o: n for o, n in renamed.items() if o in schema.names and n in names}
        names = [c for c in names if c in schema.names or c not in old.values()] + [o for o in old if o not in names]
        names += [c for c in hidden if c in schema.names]
        if writers:
            names.append("__filename")
        skip = self._skip_filter(layout)
        data = dataset.to_table(columns=names, filter=skip if where is None else where if skip is None else
                                skip & where)
        if writers:
            data = self._with_writers(data, layout)
        data = current(table, data)
        return data.select(shown + [c for c in data.column_names if c in HIDDEN]).replace_schema_metadata(None)

    def _dataset(self, files: list[str]) -> pads.Dataset:
        schemas = []
        for f in files:
            try:
                schemas.append(pq.read_schema(f, filesystem=self.fs))
            except (pa.ArrowInvalid, OSError) as err:
                raise CorruptTable(f"{f}: not a readable Parquet file ({err}). Running the sweep again moves it "
                                   f"to {self.path('quarantine')}/ and rebuilds its rows (for the spec's "
                                   f"cells).") from None
        # permissive: a knob written as 0 by one trial and 0.1 by another reads as double
        schema = pa.unify_schemas([s.remove_metadata() for s in schemas], promote_options="permissive")
        return pads.dataset(files, schema=schema, filesystem=self.fs, format="parquet")

    def dataset(self, table: str) -> pads.Dataset:
        """The files `files(table)` as one lazy pyarrow dataset (unified schema). It holds the compacted files'
        own columns and the rows `layout(table).skip` names: `read` and the DuckDB views leave those out."""
        return self._dataset(self.files(table))

    @staticmethod
    def _skip_filter(layout: Layout):
        """The rows of each compacted file that a newer writer file replaces, filtered out (None: no such rows)."""
        replaced = None
        for path, writers in layout.skip.items():
            cell = path.rsplit("/", 2)[-2]
            expr = (pc.field("cell_id") == cell) & pc.field(WRITER).isin(sorted(writers))
            replaced = expr if replaced is None else replaced | expr
        return None if replaced is None else pc.field(WRITER).is_null() | ~replaced

    @staticmethod
    def _with_writers(data: pa.Table, layout: Layout) -> pa.Table:
        """`_writer` and `_written_ns` on every row: a compacted file's own, else its file's name and mtime."""
        files = data.column("__filename").combine_chunks().dictionary_encode()
        paths = files.dictionary.to_pylist()
        writer = pa.array([stem(p) for p in paths], pa.string()).take(files.indices)
        when = pa.array([layout.mtimes.get(p) for p in paths], pa.int64()).take(files.indices)
        data = data.drop_columns(["__filename"])
        for name, fallback in ((WRITER, writer), (WRITTEN, when)):
            value = pc.coalesce(data.column(name), fallback) if name in data.column_names else fallback
            data = data.drop_columns([name]) if name in data.column_names else data
            data = data.append_column(name, value)
        return data

    def read_pandas(self, table: str, cell_id: str | None = None, columns: Iterable[str] | None = None, *,
                    heavy: bool | Iterable[str] = True, writers: bool = False, where=None):
        return self.read(table, cell_id, columns, heavy=heavy, writers=writers, where=where).to_pandas()

    # -- checks ----------------------------------------------------------------

    def schema_versions(self) -> set[int]:
        """The schema versions found in the sweep's tables: one file of each table is read (a sweep
        never mixes versions: `check_schema` refuses to extend another version's folder)."""
        found = set()
        for table in TABLES:
            files = self.files(table)
            if not files:
                continue
            try:
                column = pq.read_table(files[0], columns=["schema_version"], filesystem=self.fs).column(0)
            except (pa.ArrowException, OSError, KeyError):  # unreadable or no such column: not ours to judge
                continue
            found |= {int(v) for v in column.unique().to_pylist() if v is not None}
        return found

    def check_schema(self) -> None:
        """Raise OldTables (one line naming the folder and what to do) when the sweep's tables were written
        with another schema version than SCHEMA_VERSION."""
        other = sorted(self.schema_versions() - {SCHEMA_VERSION})
        if not other:
            return
        # --restart deletes only a folder carrying the sweep's marker (check_own); older folders have none.
        fix = ("re-run the sweep with --restart to rebuild it (deletes only this sweep's folder)"
               if self.marker() is not None else
               f"delete {self.uri} yourself and re-run the sweep (it has no {MARKER} marker, so --restart will "
               f"not delete it)")
        raise OldTables(f"{self.uri} holds tables of schema version {', '.join(map(str, other))}; this pdiff-sweep "
                        f"reads and writes version {SCHEMA_VERSION}: {fix}, or read it with the pdiff-sweep "
                        f"release that wrote it")

    def check(self) -> dict[str, int]:
        """Read every table once; raises CorruptTable naming the first unreadable file. Returns row counts."""
        return {t: self.read(t, columns=["cell_id"]).num_rows for t in TABLES}
