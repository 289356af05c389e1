"""Progress lines for long sweeps: one line per finished unit, with counts and elapsed time."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(self, stream: TextIO = sys.stdout):
        self.stream = stream
        self.start = time.monotonic()
        self.counts: dict[str, list[int]] = {}  # stage -> [done, total]

    def say(self, message: str) -> None:
        print(f"[{time.monotonic() - self.start:6.0f}s] {message}", file=self.stream, flush=True)

    def stage(self, name: str, total: int, done: int = 0) -> None:
        self.counts[name] = [done, total]
        self.say(f"{name}: {done}/{total} already done" if done else f"{name}: {total} to do")

    def advance(self, name: str, message: str) -> None:
        counts = self.counts[name]
        counts[0] += 1
        self.say(f"{name} {counts[0]}/{counts[1]}: {message}")
