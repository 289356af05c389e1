"""Which Parquet files make a table of a sweep, and how they resolve into its rows (`Store.layout`).

Layout: `<storage>/<sweep>/<table>/<cell_id>/<writer_id>.parquet`. A writer's file name is deterministic (a
cell, a trial), so a retried writer replaces its own rows instead of duplicating them.

Compaction (`orchestrator.store.compaction`) merges the writer files of one `<table>/<cell_id>/` folder into
one file beside them, `_compact-<generation>-<digest>.parquet`, whose rows carry their writer (`_writer`) and
its file's modification time (`_written_ns`), and whose footer lists every writer it holds with its file's
size and SHA-256. Readers take each folder's newest compacted file (highest generation) and every writer file
it does not hold byte for byte; a writer file written after the compaction (a re-run trial) replaces that
writer's rows in the compacted file; a zero-row writer file there (a `Store.delete` or `quarantine` of a
compacted writer: a tombstone) removes them. So each row is read exactly once.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.store.errors import CorruptTable
from orchestrator.store.folder import SweepFolder
from orchestrator.store.schema import TABLES, current

__all__ = ["COMPACT_PREFIX", "HIDDEN", "LISTING", "WRITER", "WRITTEN", "Layout", "TableFiles", "generation",
           "inside", "stem"]

COMPACT_PREFIX = "_compact-"  # <table>/<cell_id>/_compact-<generation>-<digest>.parquet
WRITER, WRITTEN = "_writer", "_written_ns"  # a compacted file's row: its writer, its writer file's mtime (ns)
HIDDEN = (WRITER, WRITTEN)  # not part of a table's rows: readers leave them out unless asked (`writers=True`)
LISTING = b"pdiff_compact"  # a compacted file's schema metadata: JSON, see TableFiles._listing
_COMPACT_NAME = re.compile(r"_compact-(\d{6})-[0-9a-f]{12}\.parquet")


def generation(name: str) -> int | None:
    """A compacted file's generation, from its file name; None for any other file."""
    m = _COMPACT_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def stem(path: str) -> str:
    """A Parquet file's name without `.parquet`: a writer file's writer."""
    return path.rsplit("/", 1)[-1][: -len(".parquet")]


@dataclass
class Layout:
    """How one table's files resolve into its rows (Store.layout): what a reader reads, and what it skips."""

    reads: list[str]  # files whose rows are read: writer files, and each folder's newest compacted file
    skip: dict[str, set[str]]  # compacted file -> writers whose rows in it are not read (a newer own file wins)
    ignored: list[str]  # files never read: older compacted files, writer files a compacted file holds byte for byte
    compacted: dict[str, str]  # folder -> its newest compacted file
    mtimes: dict[str, int | None]  # file -> modification time (ns)


def inside(root: str, paths: Iterable[str]) -> dict[str, str]:
    """{path: its real path} for those of `paths` that are regular files whose real path is inside the real
    folder `root`, each real path once. A link out of the sweep (`runs/x.parquet -> /etc/hostname`), a FIFO or
    a device is left out: a reader reads (and a query may read) only these."""
    prefix = os.path.realpath(root).rstrip("/") + "/"
    out: dict[str, str] = {}
    seen: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        try:
            regular = stat.S_ISREG(os.stat(real).st_mode)
        except OSError:  # gone meanwhile, or a loop of links
            continue
        if regular and real.startswith(prefix) and real not in seen:
            out[path] = real
            seen.add(real)
    return out


class TableFiles(SweepFolder):
    """The files of a sweep's tables, how they resolve into rows, and what each writer left."""

    def _infos(self, table: str, cell_id: str | None = None) -> list[pafs.FileInfo]:
        base = self.path(table, cell_id) if cell_id else self.path(table)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        if self.is_local:  # never into a linked folder, never a link out of the sweep, a FIFO or a device
            found = [os.path.join(folder, n) for folder, _, names in os.walk(base) for n in names]
            infos = self.fs.get_file_info(list(inside(self.root, found)))
        else:
            infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted((i for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                       and not i.base_name.startswith(".")), key=lambda i: i.path)

    def all_files(self, table: str, cell_id: str | None = None) -> list[str]:
        """Every Parquet file of a table (or of one cell of it), read or not (see `files`)."""
        return [i.path for i in self._infos(table, cell_id)]

    def files(self, table: str, cell_id: str | None = None) -> list[str]:
        """The files whose rows make the table (or one cell of it): `layout(...).reads`."""
        return self.layout(table, cell_id).reads

    def layout(self, table: str, cell_id: str | None = None) -> Layout:
        """How the table's files resolve into rows (the module docstring): in each folder, the newest compacted
        file and every writer file it does not hold byte for byte (which then replaces its rows there)."""
        folders: dict[str, list[pafs.FileInfo]] = {}
        for info in self._infos(table, cell_id):
            folders.setdefault(info.path.rsplit("/", 1)[0], []).append(info)
        out = Layout([], {}, [], {}, {})
        for folder, infos in sorted(folders.items()):
            out.mtimes |= {i.path: i.mtime_ns for i in infos}
            compacts = sorted((g, i.path) for i in infos if (g := generation(i.base_name)) is not None)
            writers = [i for i in infos if generation(i.base_name) is None]
            if not compacts:
                out.reads += [i.path for i in writers]
                continue
            newest = compacts[-1][1]
            out.compacted[folder] = newest
            out.reads.append(newest)
            out.ignored += [p for _, p in compacts[:-1]]
            listing = self._listing(newest)["writers"] if writers else {}
            for info in writers:
                entry = listing.get(stem(info.path))
                if entry is not None and self._holds(entry, info):
                    out.ignored.append(info.path)  # left by a compaction that stopped before deleting it
                    continue
                out.reads.append(info.path)  # written after the compaction (or not yet compacted)
                if entry is not None and entry["rows"]:
                    out.skip.setdefault(newest, set()).add(stem(info.path))
        out.reads.sort()
        out.ignored.sort()
        return out

    def _listing(self, path: str) -> dict[str, Any]:
        """A compacted file's listing: {"generation", "absorbs": [names], "writers": {writer: {"bytes", "sha256",
        "rows", "mtime_ns"}}}."""
        try:
            meta = pq.read_schema(path, filesystem=self.fs).metadata or {}
            return json.loads(meta[LISTING])
        except (pa.ArrowException, OSError, KeyError, ValueError) as err:
            raise CorruptTable(f"{path}: not a readable compacted file ({' '.join(str(err).split())}). Running "
                               f"the sweep again moves it to {self.path('quarantine')}/ and rebuilds its rows (for "
                               f"the spec's cells).") from None

    def _holds(self, entry: dict[str, Any], info: pafs.FileInfo) -> bool:
        """Whether a writer file is, byte for byte, the one a compacted file's listing entry describes."""
        if info.size != entry.get("bytes"):
            return False
        try:
            with self.fs.open_input_stream(info.path) as f:
                return hashlib.sha256(f.read()).hexdigest() == entry.get("sha256")
        except OSError:
            return False

    def _compacted_rows(self, table: str, cell_id: str) -> dict[str, int]:
        """{writer: rows} of the newest compacted file of `<table>/<cell_id>/` ({} where there is none)."""
        newest = self.layout(table, cell_id).compacted.get(self.path(table, cell_id))
        return {w: e["rows"] for w, e in self._listing(newest)["writers"].items()} if newest else {}

    def _held(self, path: str) -> tuple[str, str, str] | None:
        """(table, cell_id, writer) when `path` is a writer's file path (there or not) in a folder whose compacted
        file holds rows of that writer; else None."""
        prefix = self.root.rstrip("/") + "/"
        parts = path[len(prefix):].split("/") if path.startswith(prefix) else []
        if len(parts) != 3 or parts[0] not in TABLES or not parts[2].endswith(".parquet") or \
                generation(parts[2]) is not None:
            return None
        table, cell_id, writer = parts[0], parts[1], parts[2][: -len(".parquet")]
        return (table, cell_id, writer) if self._compacted_rows(table, cell_id).get(writer) else None

    def _writer_rows_of(self, table: str, cell_id: str, writer: str) -> pa.Table:
        """One writer's rows as its own file would hold them, taken from the folder's compacted file."""
        newest = self.layout(table, cell_id).compacted[self.path(table, cell_id)]
        data = pq.read_table(newest, filesystem=self.fs, filters=pc.field(WRITER) == writer)
        return data.drop_columns([c for c in HIDDEN if c in data.column_names]).replace_schema_metadata(None)

    # -- writers: what a writer left, wherever its rows are ----------------------------------

    def writer_rows(self, table: str, cell_id: str | None = None) -> dict[str, int]:
        """{path of a writer's file: its rows, as readers see them}, for every writer of the table (or cell). A
        writer whose rows only a compacted file holds has the path its own file had (no file is there now:
        `read_writer`, `quarantine` and `delete` take it); one whose rows a tombstone removed is left out.
        An unreadable writer file (see `all_files`) is left out too."""
        layout = self.layout(table, cell_id)
        out: dict[str, int] = {}
        own = {p for p in layout.reads if generation(p.rsplit("/", 1)[1]) is None}
        for folder, compact in layout.compacted.items():
            skip = layout.skip.get(compact, set())
            for writer, entry in self._listing(compact)["writers"].items():
                path = f"{folder}/{writer}.parquet"
                if entry["rows"] and writer not in skip and path not in own:
                    out[path] = entry["rows"]
        for path in own:
            try:
                n = pq.read_metadata(path, filesystem=self.fs).num_rows
            except (pa.ArrowException, OSError, ValueError):
                continue
            folder, name = path.rsplit("/", 1)
            if n == 0 and folder in layout.compacted and stem(path) in layout.skip.get(layout.compacted[folder], ()):
                continue  # a tombstone
            out[path] = n
        return dict(sorted(out.items()))

    def writer_ids(self, table: str, cell_id: str) -> set[str]:
        """The writers (file stems: trial ids, `snapshots`, ...) with rows in `<table>/<cell_id>/`."""
        return {stem(p) for p in self.writer_rows(table, cell_id)}

    def has_writer(self, table: str, cell_id: str, writer_id: str) -> bool:
        return writer_id in self.writer_ids(table, cell_id)

    def read_writer(self, path: str) -> list[dict] | None:
        """A writer's rows (a path of `writer_rows`: its own file, or its rows in a compacted file), renamed columns
        under today's names (`current`); None when they cannot be read."""
        table = path[len(self.root.rstrip("/")) + 1:].split("/", 1)[0]
        try:
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                return current(table, pq.read_table(path, filesystem=self.fs)).to_pylist()
            held = self._held(path)
            return current(table, self._writer_rows_of(*held)).to_pylist() if held else None
        except (pa.ArrowException, OSError, ValueError, CorruptTable):
            return None
