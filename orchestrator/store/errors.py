"""What goes wrong with a sweep's store, as exceptions: an unreadable table, a folder that is not the sweep's
own, tables of another schema version, and a storage that fails under a writer (StorageFault)."""

from __future__ import annotations

import errno
import re

__all__ = ["CorruptTable", "NotOurFolder", "OldTables", "StorageFault", "TRANSIENT", "storage_fault"]


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
