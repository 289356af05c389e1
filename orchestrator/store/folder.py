"""Where a sweep lives, `<storage>/<sweep>/` on any pyarrow filesystem, and how a file gets there whole.

`SweepFolder` is the base of `orchestrator.store.tables.Store`: the folder's filesystem, root and paths, and
`_put`, every write of the store. Local files are written under a hidden temporary name and renamed, so readers
never see half a file; object stores (S3) make a PUT visible only once complete.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pyarrow.fs as pafs

from orchestrator.store.errors import StorageFault
from orchestrator.store.paths import RAY

__all__ = ["SweepFolder"]


@dataclass(frozen=True)
class SweepFolder:
    """The folder of one sweep: `<storage>/<sweep>/`, on any pyarrow filesystem."""

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
