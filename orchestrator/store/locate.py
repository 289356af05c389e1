"""The sweep folder a command-line RESULTS_DIR names (a local path or SCHEME://BUCKET/.../SWEEP)."""

from __future__ import annotations

import os
from pathlib import Path

from orchestrator.store.tables import Store


def parse_results_dir(text: str) -> Store:
    """`results/smoke` -> Store("results", "smoke"); `s3://bucket/x/smoke` -> Store("s3://bucket/x", "smoke").

    ValueError for what names no sweep folder by its own name: '', '/', '.', '..', 'x/..', a NUL."""
    if "\0" in text:
        raise ValueError(f"{text!r}: a path with a NUL character names no folder")
    if text.rstrip("/").rsplit("/", 1)[-1] in ("", ".", ".."):
        raise ValueError(f"{text!r}: name a sweep's folder itself, e.g. results/smoke (not the root, '.' or '..')")
    text = text.rstrip("/")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if "/" not in rest.strip("/"):
            raise ValueError(f"{text}: expected SCHEME://BUCKET/.../SWEEP, the folder of one sweep")
        parent, sweep = rest.rsplit("/", 1)
        return Store(f"{scheme}://{parent}", sweep)
    path = Path(os.path.expanduser(text)).absolute()  # `~nobody` stays as it is (Path.expanduser raises)
    return Store(str(path.parent), path.name)


def sweep_folder(text: str) -> Store:
    """The sweep a RESULTS_DIR argument names; ValueError (one line) unless it is an existing folder, not the
    root (`parse_results_dir` refuses '', '.', NUL)."""
    store = parse_results_dir(text)
    if store.is_local:
        if not os.path.lexists(store.root):
            raise ValueError(f"{text}: no such folder, so no sweep tables here")
        if not os.path.isdir(store.root):
            raise ValueError(f"{text}: not a folder; give a sweep's folder, e.g. results/smoke")
        if os.path.realpath(store.root) == "/":
            raise ValueError(f"{text}: the root folder is no sweep's folder")
    return store
