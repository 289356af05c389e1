"""The Optuna study of each cell as a journal file, `<sweep>/optuna/<cell_id>.log`: rebuilt from the
`trials` table when a cell's search starts, then written by the search as trials are asked and
told, so `optuna-dashboard <sweep>/optuna/<cell_id>.log` shows it during and after a sweep."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid

from orchestrator.store import paths
from orchestrator.store.tables import Store

# -- the Optuna study as a journal -----------------------------------------------


class Journal:
    """A cell's Optuna study in a journal file, `<sweep>/optuna/<cell_id>.log`, that optuna-dashboard opens.

    `adopt` copies the study rebuilt from the tables (in memory) into a fresh journal, which replaces the
    old one at once (a rename), and returns the journal's storage for the search to go on in. On an object
    store the journal is a local temporary file, uploaded by `publish` (after each trial)."""

    def __init__(self, store: Store, cell_id: str):
        self.store, self.cell_id = store, cell_id
        self.relpath = paths.journal(cell_id)
        if store.is_local:
            self.local, self._tmpdir = store.path(self.relpath), None
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="pdiff-optuna-")
            self.local = os.path.join(self._tmpdir, f"{cell_id}.log")

    def adopt(self, storage, study_name: str):
        # optuna takes seconds to import: loaded where a search runs (see study.py)
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        directory = os.path.dirname(self.local)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(self.local)}.{uuid.uuid4().hex}.tmp")
        try:
            optuna.copy_study(from_study_name=study_name, from_storage=storage,
                              to_storage=JournalStorage(JournalFileBackend(tmp)))
            os.replace(tmp, self.local)
        finally:
            for leftover in (tmp, f"{tmp}.lock"):
                if os.path.lexists(leftover):
                    os.remove(leftover)
        self.publish()
        return JournalStorage(JournalFileBackend(self.local))

    def publish(self) -> None:
        """Upload the journal (object-store sweeps; a local sweep's journal is written in place)."""
        if self._tmpdir is not None and os.path.exists(self.local):
            with open(self.local, "rb") as f:
                self.store.write_bytes(self.relpath, f.read())

    def close(self) -> None:
        self.publish()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
