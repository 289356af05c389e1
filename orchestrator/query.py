"""`python -m orchestrator.query RESULTS_DIR "SQL" [--format table|csv|json]`: DuckDB over a sweep's tables.

Each table is a view by its name: `sources`, `checkpoints`, `trials`, `generated`,
`baselines`, `curves`, `runs` (their columns: `python -m orchestrator.explain`, from
`orchestrator.store.columns`). For example:

    python -m orchestrator.query results/smoke "SELECT cell_id, trial_id, val_acc_pct, val_max_iou FROM trials ORDER BY val_acc_pct DESC"

`table` (the default) prints a readable table; `csv` and `json` (a list of
objects) are for scripts; two output columns of the same name are told apart as
DuckDB does (`val_acc`, `val_acc_1`). Exit status: 0 done, 2 with one line on
stderr: an error in the SQL (DuckDB's message), a RESULTS_DIR that is no sweep's
folder (missing, a file, the root, '.'), no sweep tables there, or tables of
another schema version.

Queries are read-only: exactly one SELECT statement (DESCRIBE, SUMMARIZE and SHOW
too), checked by DuckDB's own parser; COPY, ATTACH, INSTALL, EXPORT, SET and
anything that writes are refused (exit 2). As a second line of defence the
connection, once its views exist, may read only the tables' own files, by real
path: regular files inside the sweep's real folder, no link out of it, no glob
(`allowed_paths`, `enable_external_access = false`, `lock_configuration = true`).
A table with an unreadable (e.g. truncated) file fails only the queries that
read it, with a one-line error naming the file.
"""

from __future__ import annotations

import csv
import datetime
import decimal
import json
import math
import os
import re
import shutil
import sys
from typing import Any, Sequence

from orchestrator.console import ArgumentParser, refuse, run
from orchestrator.results.query import check_sql, run_query
from orchestrator.store.errors import CorruptTable, OldTables
from orchestrator.store.locate import sweep_folder
from orchestrator.store.schema import TABLES


def _plain(v: Any) -> Any:
    """A value as JSON can hold it."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, decimal.Decimal):
        return float(v)
    if isinstance(v, (datetime.date, datetime.time, datetime.timedelta)):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    return v


def _write_csv(columns: list[str], rows: list[tuple], out) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else json.dumps(_plain(v)) if isinstance(v, (list, tuple, dict)) else
                         _plain(v) for v in row])


def _write_table(columns: list[str], rows: list[tuple], out) -> None:
    import pandas as pd

    def short(v: Any) -> Any:  # a long list (a `params` vector) as its head and its length
        if isinstance(v, (list, tuple)):
            text = "[" + ", ".join(f"{x:.4g}" if isinstance(x, float) else str(x) for x in v[:8])
            return text + (f", ... ({len(v)} items)]" if len(v) > 8 else "]")
        return v

    df = pd.DataFrame([[short(v) for v in row] for row in rows], columns=pd.Index(columns), dtype=object)
    for c in df.columns:  # numeric columns print as numbers, aligned right
        converted = pd.to_numeric(df[c], errors="coerce")
        if len(df) and converted.notna().sum() == df[c].notna().sum() and not df[c].map(
                lambda v: isinstance(v, bool)).any():
            df[c] = converted
    width = shutil.get_terminal_size((200, 40)).columns
    with pd.option_context("display.max_columns", None, "display.max_rows", None, "display.width", max(width, 80),
                           "display.max_colwidth", 48):
        out.write((df.to_string(index=False) if len(df) else "  ".join(columns) or "(no result)") + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def _line(err: BaseException) -> str:
    """An error as one printable line: DuckDB's message without the statement and caret it appends ("LINE 1:
    ..."), other line breaks as spaces, control characters (of a path, of the SQL) escaped."""
    text = re.split(r"\n\s*LINE \d+:", str(err))[0].strip()
    return "".join(c if c.isprintable() else " " if c in "\r\n" else ascii(c)[1:-1] for c in text) or \
        type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m orchestrator.query", description=__doc__.split("\n")[0],
                            epilog="views: " + ", ".join(TABLES))
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's folder, e.g. results/smoke or s3://...")
    parser.add_argument("sql", metavar="SQL", help="one SQL statement (DuckDB dialect)")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output (default: table)")
    args = parser.parse_args(argv)

    import duckdb

    try:
        check_sql(args.sql)
        store = sweep_folder(args.results_dir)
        if not store.files("sources") and not store.files("trials"):
            raise ValueError(f"{args.results_dir}: no sweep tables here (expected {store.uri}/<table>/*/*.parquet)")
        columns, rows = run_query(store, args.sql)
    except (duckdb.Error, ValueError, CorruptTable, OldTables, OSError) as err:  # QueryRefused is a ValueError
        return refuse(_line(err))
    try:
        if args.format == "json":
            json.dump([dict(zip(columns, (_plain(v) for v in row))) for row in rows], sys.stdout, indent=1,
                      default=str)
            sys.stdout.write("\n")
        elif args.format == "csv":
            _write_csv(columns, rows, sys.stdout)
        else:
            _write_table(columns, rows, sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; no error at exit's flush either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    run(main)
