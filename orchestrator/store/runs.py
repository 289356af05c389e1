"""The `runs` table: one row per sweep command run (commit, package versions, hosts, start, end,
outcome), written when the run starts and replaced by the same writer when it ends."""

from __future__ import annotations

import platform
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from orchestrator.store.columns import VERSIONS
from orchestrator.store.tables import Store

# -- the runs table ----------------------------------------------------------------



def _git(*args: str) -> str | None:
    where = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class RunRecord:
    """One run of `python -m orchestrator.sweep`, as a row of the `runs` table (`<sweep>/runs/<run_id>.parquet`).

    `start` writes it with outcome 'running'; `end` replaces it with the outcome, exit status and end time.
    `exit_hook` (for an ExitStack) ends it as 'interrupted' (Ctrl-C) or 'failed' when the run raises. A run
    starts holding the sweep's lease, so a row still 'running' then is a run that ended without recording it
    (killed, its lease taken over as stale, or its storage failed): `start` marks it 'abandoned', naming
    this run as the one that took over."""

    store: Store
    command: str
    run_id: str = field(default_factory=lambda: _now().strftime("r%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6])
    started_at: datetime = field(default_factory=_now)
    cluster: dict[str, Any] = field(default_factory=dict)
    ended: bool = False

    def observe_cluster(self) -> None:
        """The connected Ray cluster's alive nodes, CPUs and GPUs (kept for the next row written)."""
        import ray

        if not ray.is_initialized():
            return
        resources = ray.cluster_resources()
        self.cluster = {"hosts": sum(1 for n in ray.nodes() if n.get("Alive")),
                        "cluster_cpus": float(resources.get("CPU", 0.0)),
                        "cluster_gpus": float(resources.get("GPU", 0.0))}

    def row(self, outcome: str, exit_status: int | None, error: str | None, ended_at: datetime | None) -> dict:
        commit = _git("rev-parse", "HEAD")
        dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
        return {
            "run_id": self.run_id, "command": self.command, "started_at": self.started_at, "ended_at": ended_at,
            "seconds": (ended_at - self.started_at).total_seconds() if ended_at else None,
            "outcome": outcome, "exit_status": exit_status, "error": error,
            "git_commit": commit, "git_dirty": dirty, "driver_host": socket.gethostname(),
            "hosts": None, "cluster_cpus": None, "cluster_gpus": None, **self.cluster,
            "python_version": platform.python_version(), **{f"{p}_version": _version(p) for p in VERSIONS},
        }

    def _write(self, *args) -> None:
        self.store.write("runs", None, self.run_id, [self.row(*args)])

    def start(self) -> "RunRecord":
        self.observe_cluster()
        self._abandon_others()
        self._write("running", None, None, None)
        return self

    def _abandon_others(self) -> None:
        """Mark the rows of earlier runs still 'running' as 'abandoned' (this run holds the lease now). An
        unreadable runs file is left to healing, which quarantines it."""
        for path in self.store.writer_rows("runs"):
            rows = self.store.read_writer(path) or []
            if len(rows) != 1 or rows[0].get("outcome") != "running" or rows[0].get("run_id") == self.run_id:
                continue
            row = rows[0] | {"outcome": "abandoned", "error": (
                f"abandoned: ended without recording it (killed, or its lease taken over as stale, or its storage "
                f"failed); run {self.run_id} took the sweep over")}
            self.store.write("runs", None, path.rsplit("/", 1)[1].removesuffix(".parquet"), [row])

    def end(self, outcome: str, exit_status: int | None, error: str | None = None) -> None:
        self.ended = True
        self._write(outcome, exit_status, error, _now())

    def exit_hook(self, exc_type, exc, tb) -> bool:
        """For `ExitStack.push`: a run that raises ends 'interrupted' or 'failed', even after `end` (the report
        comes after it); one that returns without `end` ends 'done'."""
        if exc_type is None:
            if not self.ended:
                self.end("done", 0)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("interrupted", 130)
        else:
            try:
                self.end("failed", 1, " ".join(f"{exc_type.__name__}: {exc}".split())[:500])
            except OSError:  # the storage that failed the run: its row stays 'running' until the next run
                pass
        return False  # the exception (if any) goes on
