"""One run at a time per sweep folder: the lease file `<storage>/<name>/_lease.json`.

The lease records who runs the sweep: `{sweep, host, pid, token, start, heartbeat}`.
The run holding it rewrites `heartbeat` every `HEARTBEAT_S` (10 s) from a daemon
thread and removes the file when it ends. A second run of the same sweep reads
the lease and stops (exit 2), naming the holder, unless the lease is stale: no
heartbeat for `STALE_S` (60 s), or the holder ran on this host and its process
is gone (a run killed with SIGKILL is taken over at once on the same host, after
60 s from another one).

Local folders (shared mounts included): a lease is created atomically, as a hard
link to a complete temporary file (or with O_EXCL where links are unsupported),
which fails when the name exists; a stale lease is replaced only under a
short-lived `_lease.json.break` lock, after checking it is still the stale one,
so two runs racing for it cannot both win.

Object stores (s3://...) offer no create-if-absent through pyarrow, so there it
is best effort: a run that finds no live lease writes its own with a random
token, waits `SETTLE_S` (1 s) and reads it back; only the run that reads its own
token goes on. Two runs that both read "no lease" and then write more than
`SETTLE_S` apart can both go on. Staleness compares the wall clocks of the hosts
involved: keep them within a few seconds of each other (NTP).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any

import pyarrow.fs as pafs

from orchestrator.store.ownership import LEASE
from orchestrator.store.tables import Store

__all__ = ["HEARTBEAT_S", "STALE_S", "Lease", "LeaseHeld"]

HEARTBEAT_S = 10.0
STALE_S = 60.0
SETTLE_S = 1.0


def _when(stamp: Any) -> str:
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool):
        return "an unknown time"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))
    except (OverflowError, OSError, ValueError):
        return "an unknown time"


class LeaseHeld(RuntimeError):
    """Another run holds the sweep's lease."""

    def __init__(self, where: str, holder: dict[str, Any]):
        self.holder = holder
        beat = holder.get("heartbeat")
        ago = f"{max(0.0, time.time() - beat):.0f} s ago" if isinstance(beat, (int, float)) else "unknown"
        super().__init__(
            f"{where} is in use by another run of this sweep: host {holder.get('host', '?')}, pid "
            f"{holder.get('pid', '?')}, since {_when(holder.get('start'))} (last heartbeat {ago}). Wait for it "
            f"to end or stop it; the lease of a run that was killed expires {STALE_S:g} s after its last "
            f"heartbeat (at once on the same host)")


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return True  # unknown: rely on the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, owned by someone else
        return True
    return True


class Lease:
    """`with Lease(store): ...` holds the sweep's lease (raises LeaseHeld where another run does)."""

    def __init__(self, store: Store, *, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S,
                 settle_s: float = SETTLE_S):
        self.store = store
        self.path = store.path(LEASE)
        self.heartbeat_s, self.stale_s, self.settle_s = heartbeat_s, stale_s, settle_s
        self.token = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.start = time.time()
        self.lost = False  # another run took the lease over (this one stalled for longer than stale_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._held = False

    # -- public ------------------------------------------------------------------

    def acquire(self) -> "Lease":
        if self.store.is_local:
            self._acquire_local()
        else:
            self._acquire_remote()
        self._held = True
        self._thread = threading.Thread(target=self._beat, name="pdiff-sweep-lease", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lease if it is still this run's."""
        if not self._held or os.getpid() != self.pid:  # never from a forked child
            return
        self._held = False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            current = self._read()
            if current is not None and current.get("token") == self.token:
                self.store.fs.delete_file(self.path)
        except OSError:
            pass

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # -- the file ------------------------------------------------------------------

    def _record(self) -> dict[str, Any]:
        return {"sweep": self.store.sweep, "host": self.host, "pid": self.pid, "token": self.token,
                "start": self.start, "heartbeat": time.time()}

    def _payload(self) -> bytes:
        return (json.dumps(self._record(), indent=1) + "\n").encode()

    def _read(self) -> dict[str, Any] | None:
        """The lease on disk; None where there is none. An unreadable one reads as a lease whose
        heartbeat is its file's modification time (so it goes stale like any other)."""
        info = self.store.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return None
        mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
        try:
            with self.store.fs.open_input_stream(self.path) as f:
                data = json.loads(f.read(1 << 16))
        except (OSError, ValueError):
            data = None
        if not isinstance(data, dict):
            return {"heartbeat": mtime, "host": "?", "pid": "?", "unreadable": True}
        if not isinstance(data.get("heartbeat"), (int, float)) or isinstance(data.get("heartbeat"), bool):
            data["heartbeat"] = mtime
        return data

    def _stale(self, holder: dict[str, Any]) -> bool:
        if time.time() - holder["heartbeat"] > self.stale_s:
            return True
        return holder.get("host") == self.host and not _pid_alive(holder.get("pid"))

    def _held_error(self, holder: dict[str, Any] | None) -> LeaseHeld:
        return LeaseHeld(self.store.uri, holder or {})

    # -- local folders: atomic create, breaking a stale lease under a lock ----------------

    def _acquire_local(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        holder = None
        for _ in range(5):
            if self._create_local():
                return
            holder = self._read()
            if holder is None:  # released in between: try again
                continue
            if not self._stale(holder):
                raise self._held_error(holder)
            if self._break_local(holder):
                return
            time.sleep(0.05)
        raise self._held_error(self._read() or holder)

    def _tmp(self) -> str:
        tmp = f"{os.path.dirname(self.path)}/.{LEASE}.{self.token}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with open(tmp, "xb") as f:
                f.write(self._payload())
        except BaseException:  # a full disk fails the write (or the close): leave no half file beside the lease
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return tmp

    def _replace_local(self) -> None:
        tmp = self._tmp()
        try:
            os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _create_local(self) -> bool:
        tmp = self._tmp()
        try:
            try:
                os.link(tmp, self.path)  # fails if the lease exists; the file is complete when it appears
                return True
            except FileExistsError:
                return False
            except OSError:  # a filesystem without hard links
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(self._payload())
                return True
        finally:
            os.unlink(tmp)

    def _break_local(self, stale: dict[str, Any]) -> bool:
        lock = self.path + ".break"
        try:
            os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            try:  # a break lock left by a run killed while breaking
                if time.time() - os.path.getmtime(lock) > self.stale_s:
                    os.unlink(lock)
            except OSError:
                pass
            return False
        try:
            current = self._read()
            if current is not None and current.get("token") != stale.get("token"):
                return False  # someone else took it over first
            self._replace_local()
            return True
        finally:
            os.unlink(lock)

    # -- object stores: write, settle, read back (best effort) ------------------------

    def _write_remote(self) -> None:
        with self.store.fs.open_output_stream(self.path) as sink:
            sink.write(self._payload())

    def _acquire_remote(self) -> None:
        self.store.fs.create_dir(self.path.rsplit("/", 1)[0], recursive=True)
        holder = self._read()
        if holder is not None and not self._stale(holder):
            raise self._held_error(holder)
        self._write_remote()
        time.sleep(self.settle_s)
        current = self._read()
        if current is None or current.get("token") != self.token:
            raise self._held_error(current)

    # -- heartbeat ------------------------------------------------------------------

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                current = self._read()
                if current is None or current.get("token") != self.token:
                    self.lost = True
                    print(f"warning: {self.store.uri}: this run's lease was taken over by host "
                          f"{(current or {}).get('host', '?')}, pid {(current or {}).get('pid', '?')} (no heartbeat "
                          f"for {self.stale_s:g} s?); two runs may now work on this sweep", file=sys.stderr, flush=True)
                    return
                if self.store.is_local:
                    self._replace_local()
                else:
                    self._write_remote()
            except OSError as err:
                print(f"warning: {self.store.uri}: could not refresh the lease ({err})", file=sys.stderr, flush=True)
