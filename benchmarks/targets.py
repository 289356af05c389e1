"""A benchmark's targets, judged: each printed MET or MISSED, and the exit status that `make bench` reads.

A benchmark's `main` returns `exit_status(targets)` (run as `sys.exit(main())`), so one that prints MISSED
(or DISAGREE) exits 1 and `make bench` fails, after running the others.
"""

from __future__ import annotations

from typing import Iterable

__all__ = ["mark", "exit_status"]


def mark(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def exit_status(targets: Iterable[tuple[str, bool]]) -> int:
    """0 when every (text, met) target was met, else 1."""
    return 0 if all(ok for _, ok in targets) else 1
