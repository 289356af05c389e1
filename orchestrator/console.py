"""What the commands (sweep, report, query, generate, explain) share at the console.

- `ArgumentParser`: a usage error is one line on stderr, `error: ...`, exit 2 (argparse prints the
  usage and then the error: two lines).
- `plain_console`: no colour codes on a stdout or stderr that is not a terminal (Ray colours its
  lines and the `ray::...` names inside its errors).
- `run`: a command's `__main__`, so that a traceback, printed after `main` returns, goes through the same
  colour-free console; Ctrl-C ends it with one line and 130.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import traceback
from typing import Callable, NoReturn

__all__ = ["ANSI", "ArgumentParser", "one_line", "plain_console", "printable", "refuse", "run"]

# CSI (colours, cursor moves), OSC (titles, links) and the two-character escapes.
ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")


def cell_label(arch: str, dataset: str, seed: int) -> str:
    """How every table, figure and console line names a cell."""
    return f"{arch} / {dataset} / seed {seed}"


def printable(text: str) -> str:
    """`text` with its control characters escaped (a path from the user may hold a newline, an ESC, a NUL)."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


def one_line(text: str) -> str:
    """`text` on one line, printable, colour codes and runs of white space dropped."""
    return " ".join(printable(" ".join(ANSI.sub("", str(text)).split())).split())


def refuse(reason: BaseException | str) -> int:
    """Print `error: <reason>` as one line on stderr; returns 2, the exit status of bad input."""
    print(f"error: {one_line(reason)}", file=sys.stderr, flush=True)
    return 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line, `error: ...`, and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {one_line(message)} (see {self.prog} --help)\n")


class _Plain:
    """A stream that drops ANSI escape codes, for output that is not a terminal."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(ANSI.sub("", text))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _plain(stream):
    if stream is None or isinstance(stream, _Plain):
        return stream
    try:
        return stream if stream.isatty() else _Plain(stream)
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return _Plain(stream)


@contextlib.contextmanager
def plain_console():
    """sys.stdout and sys.stderr without colour codes where they are not a terminal, inside the block."""
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _plain(sys.stdout), _plain(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = streams


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with `main()`'s status. An unexpected error prints its traceback (exit 1) while the console is
    still the colour-free one: left to Python, it would print after `main`, to the raw stream."""
    with plain_console():
        try:
            status = main()
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            status = 130
        except Exception:  # noqa: BLE001 (SystemExit passes: argparse's --help and usage errors)
            traceback.print_exc()
            sys.stderr.flush()
            status = 1
    sys.exit(status)
