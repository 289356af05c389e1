"""Compaction (`Store.compact`, `compact_sweep`; the sweep runs it after stage 2): the writer files of one
`<table>/<cell_id>/` folder merged into one compacted file beside them (`orchestrator.store.layout` says how
readers then resolve the folder's rows). At every moment, whatever a crash interrupts, each row is read
exactly once:

1. the compacted file is written under a hidden temporary name and renamed: before the rename,
   readers see the writer files alone; after it, the compacted file replaces exactly the writer files
   it lists with the same bytes, and nothing else;
2. only then are those writer files deleted, each only if it is inside the folder and its bytes still
   hash to the listing's SHA-256 (a writer file rewritten meanwhile stays, and is read);
3. last, older compacted files of the folder are deleted, each only if the new one names it as
   absorbed. An older one left by a crash is never read: the newest generation wins.

Compaction needs the sweep's lease (no writer of the folder runs): the sweep compacts after its stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.store.layout import (COMPACT_PREFIX, HIDDEN, LISTING, WRITER, WRITTEN, Layout, TableFiles,
                                       generation, stem)
from orchestrator.store.schema import TABLES, current, described

__all__ = ["COMPACT_MIN_FILES", "Compaction", "compact_sweep"]

COMPACT_MIN_FILES = 8  # a folder of fewer writer files (and no compacted file) is left as it is


class Compaction(TableFiles):
    """Merging a folder's writer files into one compacted file, and deleting what it provably holds."""

    def _own_folder(self, table: str, cell_id: str) -> str:
        """`<table>/<cell_id>/` of this sweep, refused (ValueError) where the names could lead elsewhere."""
        if table not in TABLES or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]*", cell_id or "") or ".." in cell_id:
            raise ValueError(f"not a table folder of this sweep: {table}/{cell_id}")
        folder = self.path(table, cell_id)
        if self.is_local and os.path.realpath(folder) != os.path.join(os.path.realpath(self.root), table, cell_id):
            raise ValueError(f"{folder} leads outside {self.root} (a symbolic link): not compacted")
        return folder

    def compact(self, table: str, cell_id: str, *, min_files: int = COMPACT_MIN_FILES) -> int:
        """Merge the writer files of `<table>/<cell_id>/` into one compacted file, then delete what it provably
        holds (the module docstring). Returns the writer files merged: 0 where the folder has fewer than
        `min_files` and no compacted file, or nothing new. Run it only while no writer of the folder runs (the
        sweep's lease); a crash at any point leaves every row readable exactly once, and a later call finishes."""
        folder = self._own_folder(table, cell_id)
        layout = self.layout(table, cell_id)
        old = layout.compacted.get(folder)
        new = [f for f in layout.reads if f != old]
        if (old is None and len(new) < min_files) or (not new and not layout.ignored):
            return 0
        if new:
            old = self._write_compact(table, cell_id, folder, layout, old, new)
        self._remove_contained(folder, old)
        return len(new)

    def _write_compact(self, table: str, cell_id: str, folder: str, layout: Layout, old: str | None,
                       new: list[str]) -> str:
        """Write the next generation of the folder's compacted file (the old one's rows but those the new
        writer files replace, and theirs), atomically, and check it as stored. Returns its path."""
        replaced = {stem(p) for p in new}
        listing = self._listing(old) if old else {"generation": 0, "writers": {}}
        present = {stem(p) for p in layout.ignored}  # leftover writer files: keep their entries listed
        entries = {w: e for w, e in listing["writers"].items()
                   if w not in replaced and (e["rows"] or w in present)}
        parts = []
        if old is not None:
            data = pq.read_table(old, filesystem=self.fs)
            if replaced & set(listing["writers"]):
                data = data.filter(~pc.field(WRITER).isin(sorted(replaced)))
            parts.append(current(table, data.replace_schema_metadata(None)))
        for path in new:
            with self.fs.open_input_stream(path) as f:
                payload = f.read()
            data = pq.ParquetFile(pa.BufferReader(payload)).read(use_threads=False).replace_schema_metadata(None)
            # an older sweep's file: its renamed columns under today's names (the file itself stays as written)
            data = current(table, data.drop_columns([c for c in HIDDEN if c in data.column_names]))
            writer, mtime = stem(path), layout.mtimes.get(path)
            entries[writer] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                               "rows": data.num_rows, "mtime_ns": mtime}
            parts.append(data.append_column(WRITER, pa.array([writer] * data.num_rows, pa.string()))
                         .append_column(WRITTEN, pa.array([mtime] * data.num_rows, pa.int64())))
        merged = pa.concat_tables(parts, promote_options="permissive")
        merged = merged.select([c for c in merged.column_names if c not in HIDDEN] + list(HIDDEN))
        merged = merged.cast(described(table, merged.schema))  # each column's unit and meaning in its field
        if merged.num_rows != sum(e["rows"] for e in entries.values()):
            raise RuntimeError(f"{folder}: compaction counted {merged.num_rows} rows, its listing "
                               f"{sum(e['rows'] for e in entries.values())}: nothing written")
        number = listing["generation"] + 1
        absorbs = sorted({p.rsplit("/", 1)[1] for p in [*([old] if old else []), *layout.ignored]
                          if generation(p.rsplit("/", 1)[1]) is not None} | set(listing.get("absorbs", [])))
        meta = {"generation": number, "table": table, "cell_id": cell_id, "absorbs": absorbs,
                "writers": dict(sorted(entries.items()))}
        text = json.dumps(meta, sort_keys=True)
        final = f"{folder}/{COMPACT_PREFIX}{number:06d}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.parquet"
        merged = merged.replace_schema_metadata({LISTING: text.encode()})
        self._put(final, lambda sink: pq.write_table(merged, sink, compression="zstd"))
        if self._listing(final) != meta or pq.read_metadata(final, filesystem=self.fs).num_rows != merged.num_rows:
            raise RuntimeError(f"{final}: the compacted file does not read back as written")
        return final

    def _remove_contained(self, folder: str, compact: str) -> int:
        """Delete, in `folder` only, the writer files `compact` holds byte for byte and the older compacted
        files it names as absorbed. Returns how many files were deleted."""
        listing = self._listing(compact)
        removed = 0
        for info in self.fs.get_file_info(pafs.FileSelector(folder)):
            name = info.base_name
            path = f"{folder}/{name}"
            if info.type != pafs.FileType.File or not name.endswith(".parquet") or name.startswith(".") \
                    or path == compact or info.path.rstrip("/") != path:
                continue
            if self.is_local and os.path.islink(path):
                continue
            number = generation(name)
            if number is not None:
                contained = number < listing["generation"] and name in listing.get("absorbs", [])
            else:
                entry = listing["writers"].get(stem(path))
                contained = entry is not None and self._holds(entry, info)
            if contained:
                self.fs.delete_file(path)
                removed += 1
        return removed


def compact_sweep(store: Compaction, tables: Iterable[str] | None = None, *, min_files: int = COMPACT_MIN_FILES) -> int:
    """`Store.compact` every cell folder of every table (or of `tables`); returns the writer files merged.
    Only while no writer of the sweep runs: the sweep calls it after its stages, holding the lease."""
    merged = 0
    for table in tables or TABLES:
        base = store.path(table)
        if store.fs.get_file_info(base).type != pafs.FileType.Directory:
            continue
        for info in sorted(store.fs.get_file_info(pafs.FileSelector(base)), key=lambda i: i.path):
            if info.type == pafs.FileType.Directory and not info.base_name.startswith("."):
                merged += store.compact(table, info.base_name, min_files=min_files)
    return merged
