"""Parquet tables of a sweep: schemas, atomic one-file-per-writer writes, readers.

Layout: `<storage>/<sweep>/<table>/<cell_id>/<writer_id>.parquet`. A writer's
file name is deterministic (a cell, a trial), so a retried writer replaces its
own rows instead of duplicating them. Local files are written under a hidden
temporary name and renamed, so readers never see half a file; object stores
(S3) make a PUT visible only once complete.

A sweep's folder carries a marker, `_sweep.json` (the sweep's name and spec
hash), written on its first real run. `delete_all` (--restart) deletes only a
folder that is exactly `<storage>/<name>`, is no symbolic link, and carries this
sweep's marker; anything else is refused (NotOurFolder) and nothing is deleted.

Compaction (`Store.compact`, `compact_sweep`; the sweep runs it after stage 2): the writer files of
one `<table>/<cell_id>/` folder are merged into one file beside them,
`_compact-<generation>-<digest>.parquet`, whose rows carry their writer (`_writer`) and its file's
modification time (`_written_ns`), and whose footer lists every writer it holds with its file's size
and SHA-256. Readers (`Store.layout`) take each folder's newest compacted file (highest generation)
and every writer file it does not hold byte for byte; a writer file written after the compaction (a
re-run trial) replaces that writer's rows in the compacted file; a zero-row writer file there (a
`Store.delete` or `quarantine` of a compacted writer: a tombstone) removes them. So at every moment,
whatever a crash interrupts, each row is read exactly once:

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

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.store.paths import GENERATED_MORE, MODELS, OPTUNA, QUARANTINE, RAY, REPORT, is_sweep_name
from orchestrator.store.schema import HEAVY, SCHEMA_VERSION, TABLES

__all__ = ["MARKER", "LEASE", "COMPACT_MIN_FILES", "CorruptTable", "Layout",
           "NotOurFolder", "OldTables", "StorageFault", "Store", "compact_sweep", "storage_fault"]


MARKER = "_sweep.json"  # the sweep's own marker: {"tool", "sweep", "spec_hash", "created"}
LEASE = "_lease.json"  # who runs the sweep now (orchestrator.store.lease)
# What a sweep writes at the top of its folder. A folder without a marker is
# adopted (given one) only if it holds nothing else: an older sweep's folder.
OWN_ENTRIES = frozenset(TABLES) | {RAY, MODELS, REPORT, QUARANTINE, GENERATED_MORE, OPTUNA, MARKER,
                                   LEASE}
_TOOL = "pdiff-sweep"

COMPACT_PREFIX = "_compact-"  # <table>/<cell_id>/_compact-<generation>-<digest>.parquet
WRITER, WRITTEN = "_writer", "_written_ns"  # a compacted file's row: its writer, its writer file's mtime (ns)
HIDDEN = (WRITER, WRITTEN)  # not part of a table's rows: readers leave them out unless asked (`writers=True`)
_LISTING = b"pdiff_compact"  # a compacted file's schema metadata: JSON, see Store.compact
COMPACT_MIN_FILES = 8  # a folder of fewer writer files (and no compacted file) is left as it is
_COMPACT_NAME = re.compile(r"_compact-(\d{6})-[0-9a-f]{12}\.parquet")


def _generation(name: str) -> int | None:
    m = _COMPACT_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def _wanted(column: str, heavy: bool | Iterable[str]) -> bool:
    """Whether `Store.read(heavy=...)` reads a column when no columns are named."""
    if column not in HEAVY or heavy is True:
        return True
    return heavy is not False and column in set(heavy)


def _stem(path: str) -> str:
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


class CorruptTable(RuntimeError):
    """A Parquet file of a sweep cannot be read."""


class NotOurFolder(RuntimeError):
    """The folder at `<storage>/<name>` is not (provably) this sweep's own: nothing is deleted or adopted."""


class OldTables(RuntimeError):
    """The sweep's tables were written with another SCHEMA_VERSION: not read, not extended."""


class StorageFault(OSError):
    """The sweep's storage failed under a writer (no space, a quota, a connection lost after the client's
    retries): a transient fault, not a verdict on the work. The work stays unfinished, the sweep stops
    (exit 1), and a re-run once the fault is cleared completes it."""

    @classmethod
    def of(cls, err: OSError, doing: str = "") -> "StorageFault":
        return cls(doing + " ".join(re.sub(r"^\[Errno [^]]*\] ", "", str(err)).split()))


# OSErrors of a storage that a later run may not meet: no space, a quota, I/O, a lost connection.
TRANSIENT = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG, errno.ETIMEDOUT,
                       errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ENETUNREACH,
                       errno.EHOSTUNREACH, errno.EPIPE})


def storage_fault(err: BaseException | None) -> StorageFault | None:
    """The StorageFault behind an error (itself, its cause, what a Ray task raised), or one made from a transient
    OSError there (TRANSIENT, or an object store's "AWS Error"); None where the error is something else."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(getattr(err, "cause", None), BaseException):  # a RayTaskError: what the task raised
            err = err.cause
            continue
        if isinstance(err, StorageFault):
            return err
        if isinstance(err, OSError) and (err.errno in TRANSIENT or "AWS Error" in str(err)):
            return StorageFault.of(err)
        err = err.__cause__ or err.__context__
    return None


@dataclass(frozen=True)
class Store:
    """The results of one sweep: `<storage>/<sweep>/`, on any pyarrow filesystem."""

    storage: str  # a local folder or a URI (s3://bucket/prefix, file:///...)
    sweep: str
    spec_hash: str = ""

    def __post_init__(self):
        # Resolve a relative folder now: Ray workers run in other directories.
        if "://" not in self.storage:
            object.__setattr__(self, "storage", os.path.abspath(self.storage))

    @cached_property  # once: a URI's filesystem (e.g. S3 with its region lookup) is not rebuilt per access
    def _fs_root(self) -> tuple[pafs.FileSystem, str]:
        if "://" in self.storage:
            fs, root = pafs.FileSystem.from_uri(self.storage)
        else:
            fs, root = pafs.LocalFileSystem(), os.path.abspath(self.storage)
        return fs, f"{root.rstrip('/')}/{self.sweep}"

    @property
    def fs(self) -> pafs.FileSystem:
        return self._fs_root[0]

    @property
    def root(self) -> str:
        return self._fs_root[1]

    @property
    def uri(self) -> str:
        """Where the sweep lives, as a user would type it."""
        if "://" not in self.storage:
            return self.root
        base, _, query = self.storage.partition("?")  # options such as ?endpoint_override=... stay last
        return f"{base.rstrip('/')}/{self.sweep}" + (f"?{query}" if query else "")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def ray_storage(self) -> dict[str, Any]:
        """`storage_path` / `storage_filesystem` for Ray Train and Tune run configs: their
        experiment state goes beside the tables, on the same filesystem."""
        if self.is_local:
            return {"storage_path": self.path(RAY)}
        return {"storage_path": self.path(RAY), "storage_filesystem": self.fs}

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # -- writing -------------------------------------------------------------

    def write(self, table: str, cell_id: str | None, writer_id: str, rows: list[dict[str, Any]]) -> str:
        """Write one writer's rows as one immutable file, replacing that writer's previous file. A row of no
        cell (cell_id None, the `runs` table) goes to `<table>/<writer_id>.parquet`."""
        common = {"sweep": self.sweep, "spec_hash": self.spec_hash, "schema_version": SCHEMA_VERSION,
                  "cell_id": cell_id}
        rows = [common | row for row in rows]
        core = TABLES[table]
        extra = sorted({k for row in rows for k in row} - set(core.names))
        schema = core
        if extra:  # e.g. the knob columns of `trials`, typed from their values
            inferred = pa.Table.from_pylist([{k: row.get(k) for k in extra} for row in rows]).schema
            schema = pa.unify_schemas([core, inferred])
        data = pa.Table.from_pylist(rows, schema=schema)
        final = self.path(table, *([cell_id] if cell_id is not None else []), f"{writer_id}.parquet")
        self._put(final, lambda sink: pq.write_table(data, sink, compression="zstd"))
        return final

    def write_bytes(self, relpath: str, payload: bytes) -> str:
        final = self.path(relpath)
        self._put(final, lambda sink: sink.write(payload))
        return final

    def read_bytes(self, relpath: str) -> bytes:
        with self.fs.open_input_stream(self.path(relpath)) as f:
            return f.read()

    def _put(self, final: str, write) -> None:
        """Write `final` whole or not at all; an OSError of the storage is raised as a StorageFault naming it."""
        try:
            self.fs.create_dir(final.rsplit("/", 1)[0], recursive=True)
            if not self.is_local:  # an object store publishes a PUT atomically
                with self.fs.open_output_stream(final) as sink:
                    write(sink)
                return
            directory, name = final.rsplit("/", 1)
            tmp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
            try:
                with self.fs.open_output_stream(tmp) as sink:
                    write(sink)
                os.replace(tmp, final)  # atomic on POSIX, replaces a retried writer's file
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        except StorageFault:
            raise
        except OSError as err:
            raise StorageFault.of(err, f"cannot write {final}: ") from err

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

    def delete_inside(self, *parts: str) -> None:
        """Remove the folder `parts` below the sweep's folder (a finished run's checkpoints), if there is one.
        On a local disk, a symbolic link on the way (the folder itself or one above it, inside the sweep)
        is unlinked where it is the folder itself and refused otherwise: nothing outside the sweep's
        folder is ever deleted."""
        path = self.path(*parts)
        if not self.is_local:
            if self.fs.get_file_info(path).type == pafs.FileType.Directory:
                self.fs.delete_dir(path)
            return
        if os.path.islink(path):
            os.unlink(path)
            return
        real, root = os.path.realpath(path), os.path.realpath(self.root)
        if os.path.commonpath([real, root]) != root or real == root:
            raise ValueError(f"refusing to delete {path}: it resolves to {real}, outside the sweep's folder {root}")
        if os.path.isdir(real):
            shutil.rmtree(real)

    def delete_all(self, keep: Iterable[str] = ()) -> None:
        """Remove the sweep's results (for --restart): every entry of its folder but those named in
        `keep` (e.g. the lease of the run that restarts), and the folder itself when nothing is kept.

        Refuses (NotOurFolder, nothing deleted) unless `check_own(strict=True)` passes. Symbolic
        links inside the folder are removed, never followed."""
        self.check_own(strict=True)
        keep = set(keep)
        if self.is_local:
            real = os.path.realpath(self.root)
            if not os.path.isdir(real):
                return
            for entry in os.scandir(real):
                if entry.name in keep:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            if not keep:
                os.rmdir(real)
            return
        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return
        if not keep:
            self.fs.delete_dir(self.root)
            return
        for info in self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True)):
            if info.base_name in keep:
                continue
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(info.path)
            else:
                self.fs.delete_file(info.path)

    # -- the sweep's own folder -------------------------------------------------

    def marker(self) -> dict | None:
        """The sweep folder's marker, or None where there is none (or it is unreadable)."""
        try:
            data = json.loads(self.read_bytes(MARKER))
        except (OSError, ValueError, pa.ArrowException):
            return None
        return data if isinstance(data, dict) else None

    def write_marker(self) -> None:
        """Mark the folder as this sweep's own (first real run), or bring the spec hash up to date."""
        old = self.marker() or {}
        if old.get("sweep") == self.sweep and old.get("spec_hash") == self.spec_hash:
            return
        marker = {"tool": _TOOL, "sweep": self.sweep, "spec_hash": self.spec_hash,
                  "created": old.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        self.write_bytes(MARKER, (json.dumps(marker, indent=1) + "\n").encode())

    def _entries(self) -> list[str] | None:
        """Names at the top of the sweep folder; None when there is no folder."""
        if self.is_local:
            real = os.path.realpath(self.root)
            return sorted(os.listdir(real)) if os.path.isdir(real) else None
        if self.fs.get_file_info(self.root).type != pafs.FileType.Directory:
            return None
        return sorted(i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.root)))

    def check_own(self, *, strict: bool) -> None:
        """Raise NotOurFolder unless the sweep folder (if there is one) is this sweep's own.

        strict (--restart, before deleting): the folder is exactly `<storage>/<name>` with a valid
        name, no symbolic link leads it elsewhere, and it carries the marker naming this sweep (a
        folder holding nothing but a lease passes: there is nothing to delete).
        Not strict (a normal run, before writing): a marker, if any, names this sweep, and a folder
        without one holds only what a sweep writes (an older sweep's folder is adopted)."""

        where = self.uri
        if not is_sweep_name(self.sweep):
            raise NotOurFolder(f"{self.sweep!r} is not a valid sweep name; nothing deleted")
        if self.is_local:
            if not os.path.lexists(self.root):
                return
            if strict:
                storage_real = os.path.realpath(self.storage)
                if os.path.islink(self.root):
                    raise NotOurFolder(f"{where} is a symbolic link to {os.path.realpath(self.root)}; --restart "
                                       f"deletes only a real folder {self.storage}/{self.sweep}. Nothing deleted")
                if os.path.realpath(self.root) != os.path.join(storage_real, self.sweep):
                    raise NotOurFolder(f"{where} resolves to {os.path.realpath(self.root)}, outside "
                                       f"{storage_real}; nothing deleted")
            if not os.path.isdir(self.root):
                raise NotOurFolder(f"{where} exists and is not a folder; nothing deleted or written")
        entries = self._entries()
        if entries is None:
            return
        marker = self.marker()
        if marker is not None and marker.get("sweep") != self.sweep:
            raise NotOurFolder(f"{where}/{MARKER} names another sweep ({marker.get('sweep')!r}); "
                               f"nothing deleted or written")
        if marker is not None:
            return
        if strict and [e for e in entries if e != LEASE]:
            raise NotOurFolder(f"{where} has no {MARKER} marker, so it is not a folder this sweep wrote (or one "
                               f"written before markers: run the sweep once without --restart to mark it). "
                               f"Nothing deleted")
        foreign = [e for e in entries if e not in OWN_ENTRIES and not e.startswith(".")]
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise NotOurFolder(f"{where} already holds files a sweep does not write ({shown}) and no {MARKER} "
                               f"marker: choose another sweep name or storage. Nothing written")

    # -- reading -------------------------------------------------------------

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
            compacts = sorted((g, i.path) for i in infos if (g := _generation(i.base_name)) is not None)
            writers = [i for i in infos if _generation(i.base_name) is None]
            if not compacts:
                out.reads += [i.path for i in writers]
                continue
            newest = compacts[-1][1]
            out.compacted[folder] = newest
            out.reads.append(newest)
            out.ignored += [p for _, p in compacts[:-1]]
            listing = self._listing(newest)["writers"] if writers else {}
            for info in writers:
                entry = listing.get(_stem(info.path))
                if entry is not None and self._holds(entry, info):
                    out.ignored.append(info.path)  # left by a compaction that stopped before deleting it
                    continue
                out.reads.append(info.path)  # written after the compaction (or not yet compacted)
                if entry is not None and entry["rows"]:
                    out.skip.setdefault(newest, set()).add(_stem(info.path))
        out.reads.sort()
        out.ignored.sort()
        return out

    def _listing(self, path: str) -> dict[str, Any]:
        """A compacted file's listing: {"generation", "absorbs": [names], "writers": {writer: {"bytes", "sha256",
        "rows", "mtime_ns"}}}."""
        try:
            meta = pq.read_schema(path, filesystem=self.fs).metadata or {}
            return json.loads(meta[_LISTING])
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
                _generation(parts[2]) is not None:
            return None
        table, cell_id, writer = parts[0], parts[1], parts[2][: -len(".parquet")]
        return (table, cell_id, writer) if self._compacted_rows(table, cell_id).get(writer) else None

    def _writer_rows_of(self, table: str, cell_id: str, writer: str) -> pa.Table:
        """One writer's rows as its own file would hold them, taken from the folder's compacted file."""
        import pyarrow.compute as pc

        newest = self.layout(table, cell_id).compacted[self.path(table, cell_id)]
        data = pq.read_table(newest, filesystem=self.fs, filters=pc.field(WRITER) == writer)
        return data.drop_columns([c for c in HIDDEN if c in data.column_names]).replace_schema_metadata(None)

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
        names = [c for c in names if c not in HIDDEN] + [c for c in hidden if c in schema.names]
        if writers:
            names.append("__filename")
        skip = self._skip_filter(layout)
        data = dataset.to_table(columns=names, filter=skip if where is None else where if skip is None else
                                skip & where)
        if writers:
            data = self._with_writers(data, layout)
        return data.replace_schema_metadata(None)

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
        import pyarrow.compute as pc

        replaced = None
        for path, writers in layout.skip.items():
            cell = path.rsplit("/", 2)[-2]
            expr = (pc.field("cell_id") == cell) & pc.field(WRITER).isin(sorted(writers))
            replaced = expr if replaced is None else replaced | expr
        return None if replaced is None else pc.field(WRITER).is_null() | ~replaced

    @staticmethod
    def _with_writers(data: pa.Table, layout: Layout) -> pa.Table:
        """`_writer` and `_written_ns` on every row: a compacted file's own, else its file's name and mtime."""
        import pyarrow.compute as pc

        files = data.column("__filename").combine_chunks().dictionary_encode()
        paths = files.dictionary.to_pylist()
        stem = pa.array([_stem(p) for p in paths], pa.string()).take(files.indices)
        when = pa.array([layout.mtimes.get(p) for p in paths], pa.int64()).take(files.indices)
        data = data.drop_columns(["__filename"])
        for name, fallback in ((WRITER, stem), (WRITTEN, when)):
            value = pc.coalesce(data.column(name), fallback) if name in data.column_names else fallback
            data = data.drop_columns([name]) if name in data.column_names else data
            data = data.append_column(name, value)
        return data

    def read_pandas(self, table: str, cell_id: str | None = None, columns: Iterable[str] | None = None, *,
                    heavy: bool | Iterable[str] = True, writers: bool = False, where=None):
        return self.read(table, cell_id, columns, heavy=heavy, writers=writers, where=where).to_pandas()

    # -- writers: what a writer left, wherever its rows are ----------------------------------

    def writer_rows(self, table: str, cell_id: str | None = None) -> dict[str, int]:
        """{path of a writer's file: its rows, as readers see them}, for every writer of the table (or cell). A
        writer whose rows only a compacted file holds has the path its own file had (no file is there now:
        `read_writer`, `quarantine` and `delete` take it); one whose rows a tombstone removed is left out.
        An unreadable writer file (see `all_files`) is left out too."""
        layout = self.layout(table, cell_id)
        out: dict[str, int] = {}
        own = {p for p in layout.reads if _generation(p.rsplit("/", 1)[1]) is None}
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
            if n == 0 and folder in layout.compacted and _stem(path) in layout.skip.get(layout.compacted[folder], ()):
                continue  # a tombstone
            out[path] = n
        return dict(sorted(out.items()))

    def writer_ids(self, table: str, cell_id: str) -> set[str]:
        """The writers (file stems: trial ids, `snapshots`, ...) with rows in `<table>/<cell_id>/`."""
        return {_stem(p) for p in self.writer_rows(table, cell_id)}

    def has_writer(self, table: str, cell_id: str, writer_id: str) -> bool:
        return writer_id in self.writer_ids(table, cell_id)

    def read_writer(self, path: str) -> list[dict] | None:
        """A writer's rows (a path of `writer_rows`: its own file, or its rows in a compacted file); None when
        they cannot be read."""
        try:
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                return pq.read_table(path, filesystem=self.fs).to_pylist()
            held = self._held(path)
            return self._writer_rows_of(*held).to_pylist() if held else None
        except (pa.ArrowException, OSError, ValueError, CorruptTable):
            return None

    # -- compaction ------------------------------------------------------------------

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
        import pyarrow.compute as pc

        replaced = {_stem(p) for p in new}
        listing = self._listing(old) if old else {"generation": 0, "writers": {}}
        present = {_stem(p) for p in layout.ignored}  # leftover writer files: keep their entries listed
        entries = {w: e for w, e in listing["writers"].items()
                   if w not in replaced and (e["rows"] or w in present)}
        parts = []
        if old is not None:
            data = pq.read_table(old, filesystem=self.fs)
            if replaced & set(listing["writers"]):
                data = data.filter(~pc.field(WRITER).isin(sorted(replaced)))
            parts.append(data.replace_schema_metadata(None))
        for path in new:
            with self.fs.open_input_stream(path) as f:
                payload = f.read()
            data = pq.ParquetFile(pa.BufferReader(payload)).read(use_threads=False).replace_schema_metadata(None)
            data = data.drop_columns([c for c in HIDDEN if c in data.column_names])
            writer, mtime = _stem(path), layout.mtimes.get(path)
            entries[writer] = {"bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest(),
                               "rows": data.num_rows, "mtime_ns": mtime}
            parts.append(data.append_column(WRITER, pa.array([writer] * data.num_rows, pa.string()))
                         .append_column(WRITTEN, pa.array([mtime] * data.num_rows, pa.int64())))
        merged = pa.concat_tables(parts, promote_options="permissive")
        merged = merged.select([c for c in merged.column_names if c not in HIDDEN] + list(HIDDEN))
        if merged.num_rows != sum(e["rows"] for e in entries.values()):
            raise RuntimeError(f"{folder}: compaction counted {merged.num_rows} rows, its listing "
                               f"{sum(e['rows'] for e in entries.values())}: nothing written")
        generation = listing["generation"] + 1
        absorbs = sorted({p.rsplit("/", 1)[1] for p in [*([old] if old else []), *layout.ignored]
                          if _generation(p.rsplit("/", 1)[1]) is not None} | set(listing.get("absorbs", [])))
        meta = {"generation": generation, "table": table, "cell_id": cell_id, "absorbs": absorbs,
                "writers": dict(sorted(entries.items()))}
        text = json.dumps(meta, sort_keys=True)
        final = f"{folder}/{COMPACT_PREFIX}{generation:06d}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.parquet"
        merged = merged.replace_schema_metadata({_LISTING: text.encode()})
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
            generation = _generation(name)
            if generation is not None:
                contained = generation < listing["generation"] and name in listing.get("absorbs", [])
            else:
                entry = listing["writers"].get(_stem(path))
                contained = entry is not None and self._holds(entry, info)
            if contained:
                self.fs.delete_file(path)
                removed += 1
        return removed

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



def compact_sweep(store: Store, tables: Iterable[str] | None = None, *, min_files: int = COMPACT_MIN_FILES) -> int:
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
