"""The reference of a sweep: every spec key, every p-diff knob and every table column, generated from the code.

    python -m orchestrator.explain            # print it (as `python -m orchestrator.sweep --explain`)
    python -m orchestrator.explain --write    # regenerate docs/reference.md (a test checks it matches)

The text is built by `orchestrator.spec.docs.reference`.
"""

from __future__ import annotations

import sys

from orchestrator.console import ArgumentParser, refuse, run
from orchestrator.spec.docs import REFERENCE_PATH, reference

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m orchestrator.explain", description=__doc__.split("\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {REFERENCE_PATH.name} under docs/")
    args = parser.parse_args(argv)
    text = reference()
    if args.write:
        try:
            REFERENCE_PATH.write_text(text)
        except OSError as err:  # e.g. an installed, read-only copy of the package
            return refuse(f"cannot write {REFERENCE_PATH} ({err.strerror or err})")
        print(f"wrote {REFERENCE_PATH}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    run(main)
