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
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["SCHEMA_VERSION", "TABLES", "MARKER", "LEASE", "CorruptTable", "NotOurFolder", "OldTables", "Store"]

# 2: per-model wrong-prediction sets (`val_wrong`, `test_wrong`, packed bits, pdiff.evaluate.pack_wrong)
#    in checkpoints / generated / baselines and the split sizes (`n_val`, `n_test`) in sources; the
#    max-IoU columns say their split (`test_max_iou`, `val_max_iou`: were trials.novelty / val_novelty,
#    generated / baselines max_iou_to_train). Folders of version 1 are refused (`Store.check_schema`).
SCHEMA_VERSION = 2

# Key columns of each table. Columns are only ever added, never retyped; the
# trials table also carries every p-diff knob as a column of its own.
_COMMON = [("sweep", pa.string()), ("spec_hash", pa.string()), ("schema_version", pa.int32()),
           ("cell_id", pa.string())]
TABLES: dict[str, pa.Schema] = {
    "sources": pa.schema(_COMMON + [
        ("arch", pa.string()), ("dataset", pa.string()), ("seed", pa.int64()), ("subset", pa.list_(pa.string())),
        ("n_subset", pa.int64()), ("n_total", pa.int64()), ("k", pa.int64()), ("test_acc", pa.float64()),
        ("seconds", pa.float64()), ("node_id", pa.string()), ("model_path", pa.string()),
        ("resumed_from_epoch", pa.int64()),  # added: epochs done before the last restart (0: none)
        ("n_val", pa.int64()), ("n_test", pa.int64()),  # the splits' sizes: the bits of a packed wrong set
    ]),
    "checkpoints": pa.schema(_COMMON + [
        ("index", pa.int64()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
        ("val_wrong", pa.binary()), ("test_wrong", pa.binary()), ("params", pa.list_(pa.float32())),
    ]),
    "trials": pa.schema(_COMMON + [
        ("trial_id", pa.string()), ("search_hash", pa.string()), ("status", pa.string()),
        ("val_acc", pa.float64()), ("selected_acc", pa.float64()), ("best_test_acc", pa.float64()),
        ("mean_acc", pa.float64()), ("median_acc", pa.float64()), ("test_max_iou", pa.float64()),
        ("val_max_iou", pa.float64()), ("ae_loss", pa.float64()), ("ldm_loss", pa.float64()),
        ("seconds", pa.float64()), ("node_id", pa.string()),
        ("reason", pa.string()),  # added: why a trial's status is 'failed' (null otherwise)
    ]),
    "generated": pa.schema(_COMMON + [
        ("trial_id", pa.string()), ("index", pa.int64()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
        ("test_max_iou", pa.float64()), ("val_max_iou", pa.float64()), ("nearest_l2", pa.float64()),
        ("val_wrong", pa.binary()), ("test_wrong", pa.binary()), ("params", pa.list_(pa.float32())),
    ]),
    "baselines": pa.schema(_COMMON + [
        ("method", pa.string()), ("index", pa.int64()), ("val_acc", pa.float64()), ("test_acc", pa.float64()),
        ("test_max_iou", pa.float64()), ("val_max_iou", pa.float64()), ("nearest_l2", pa.float64()),
        ("val_wrong", pa.binary()), ("test_wrong", pa.binary()), ("params", pa.list_(pa.float32())),
    ]),
    # Added (orchestrator.feedback): a trial's training losses, decimated; one row per run of the sweep
    # command (no cell: `runs/<run_id>.parquet`, cell_id null).
    "curves": pa.schema(_COMMON + [
        ("trial_id", pa.string()), ("phase", pa.string()), ("step", pa.int64()), ("loss", pa.float64()),
    ]),
    "runs": pa.schema(_COMMON + [
        ("run_id", pa.string()), ("command", pa.string()), ("started_at", pa.timestamp("us", tz="UTC")),
        ("ended_at", pa.timestamp("us", tz="UTC")), ("seconds", pa.float64()), ("outcome", pa.string()),
        ("exit_status", pa.int64()), ("error", pa.string()), ("git_commit", pa.string()), ("git_dirty", pa.bool_()),
        ("driver_host", pa.string()), ("hosts", pa.int64()), ("cluster_cpus", pa.float64()),
        ("cluster_gpus", pa.float64()), ("python_version", pa.string()), ("torch_version", pa.string()),
        ("ray_version", pa.string()), ("optuna_version", pa.string()), ("pyarrow_version", pa.string()),
        ("duckdb_version", pa.string()),
    ]),
}


MARKER = "_sweep.json"  # the sweep's own marker: {"tool", "sweep", "spec_hash", "created"}
LEASE = "_lease.json"  # who runs the sweep now (orchestrator.lease)
# What a sweep writes at the top of its folder. A folder without a marker is
# adopted (given one) only if it holds nothing else: an older sweep's folder.
OWN_ENTRIES = frozenset(TABLES) | {"_ray", "models", "report", "quarantine", "generated_more", "optuna", MARKER,
                                   LEASE}
_TOOL = "pdiff-sweep"


class CorruptTable(RuntimeError):
    """A Parquet file of a sweep cannot be read."""


class NotOurFolder(RuntimeError):
    """The folder at `<storage>/<name>` is not (provably) this sweep's own: nothing is deleted or adopted."""


class OldTables(RuntimeError):
    """The sweep's tables were written with another SCHEMA_VERSION: not read, not extended."""


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
            return {"storage_path": self.path("_ray")}
        return {"storage_path": self.path("_ray"), "storage_filesystem": self.fs}

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

    def delete(self, table: str, cell_id: str, writer_id: str) -> None:
        path = self.path(table, cell_id, f"{writer_id}.parquet")
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def quarantine(self, path: str, reason: str) -> str:
        """Move a file of the sweep (a table's, a model's) aside into `<sweep>/quarantine/`, under its
        path relative to the sweep, with `<name>.reason.txt` beside it. Never deletes: a name already
        taken there gets a numbered suffix. Returns the new path."""
        prefix = self.root.rstrip("/") + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is not inside {self.root}")
        base = self.path("quarantine", path[len(prefix):])
        target, n = base, 0
        while self.fs.get_file_info(target).type != pafs.FileType.NotFound:
            n += 1
            target = f"{base}.{n}"
        self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
        self.fs.move(path, target)
        with self.fs.open_output_stream(f"{target}.reason.txt") as out:
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {reason}\n".encode())
        return target

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
        from .spec import is_sweep_name  # here: tables must not import the spec at module level

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

    def files(self, table: str, cell_id: str | None = None) -> list[str]:
        base = self.path(table, cell_id) if cell_id else self.path(table)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base, recursive=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                      and not i.base_name.startswith("."))

    def read(self, table: str, cell_id: str | None = None, columns: Iterable[str] | None = None) -> pa.Table:
        """One table (or one cell of it) as Arrow; files with added columns are unified."""
        files = self.files(table, cell_id)
        if not files:
            return TABLES[table].empty_table() if columns is None else TABLES[table].empty_table().select(
                [c for c in columns if c in TABLES[table].names])
        schemas = []
        for f in files:
            try:
                schemas.append(pq.read_schema(f, filesystem=self.fs))
            except (pa.ArrowInvalid, OSError) as err:
                raise CorruptTable(f"{f}: not a readable Parquet file ({err}). Running the sweep again moves it "
                                   f"to {self.path('quarantine')}/ and rebuilds its rows (for the spec's "
                                   f"cells).") from None
        # permissive: a knob written as 0 by one trial and 0.1 by another reads as double
        schema = pa.unify_schemas(schemas, promote_options="permissive")
        dataset = pads.dataset(files, schema=schema, filesystem=self.fs, format="parquet")
        return dataset.to_table(columns=list(columns) if columns else None)

    def read_pandas(self, table: str, cell_id: str | None = None, columns: Iterable[str] | None = None):
        return self.read(table, cell_id, columns).to_pandas()

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

