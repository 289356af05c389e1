"""Whose folder `<storage>/<name>` is, and deleting it (--restart) only when it is provably the sweep's own.

A sweep's folder carries a marker, `_sweep.json` (the sweep's name and spec hash), written on its first real
run. `delete_all` (--restart) deletes only a folder that is exactly `<storage>/<name>`, is no symbolic link,
and carries this sweep's marker; anything else is refused (NotOurFolder) and nothing is deleted.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Iterable

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.store.errors import NotOurFolder
from orchestrator.store.folder import SweepFolder
from orchestrator.store.paths import GENERATED_MORE, MODELS, OPTUNA, QUARANTINE, RAY, REPORT, is_sweep_name
from orchestrator.store.schema import TABLES

__all__ = ["LEASE", "MARKER", "OWN_ENTRIES", "OwnFolder"]

MARKER = "_sweep.json"  # the sweep's own marker: {"tool", "sweep", "spec_hash", "created"}
LEASE = "_lease.json"  # who runs the sweep now (orchestrator.store.lease)
# What a sweep writes at the top of its folder. A folder without a marker is
# adopted (given one) only if it holds nothing else: an older sweep's folder.
OWN_ENTRIES = frozenset(TABLES) | {RAY, MODELS, REPORT, QUARANTINE, GENERATED_MORE, OPTUNA, MARKER,
                                   LEASE}
_TOOL = "pdiff-sweep"


class OwnFolder(SweepFolder):
    """The sweep folder's marker, the check that the folder is the sweep's own, and deleting inside it."""

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
