"""`python -m orchestrator.query RESULTS_DIR "SQL" [--format table|csv|json]`: DuckDB over a sweep's tables.

Each table is a view by its name: `sources`, `checkpoints`, `trials`, `generated`,
`baselines` (see `orchestrator.tables` for their columns). For example:

    python -m orchestrator.query results/smoke "SELECT cell_id, trial_id, val_acc, novelty FROM trials ORDER BY val_acc DESC"

`table` (the default) prints a readable table; `csv` and `json` (a list of
objects) are for scripts. Exit status: 0 done, 2 an error in the SQL (DuckDB's
message on stderr) or no sweep tables at RESULTS_DIR.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import decimal
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from .tables import CorruptTable, Store

__all__ = ["parse_results_dir", "run_query", "main"]


def parse_results_dir(text: str) -> Store:
    """`results/smoke` -> Store("results", "smoke"); `s3://bucket/x/smoke` -> Store("s3://bucket/x", "smoke")."""
    text = text.rstrip("/")
    if "://" in text:
        scheme, rest = text.split("://", 1)
        if "/" not in rest.strip("/"):
            raise ValueError(f"{text}: expected SCHEME://BUCKET/.../SWEEP, the folder of one sweep")
        parent, sweep = rest.rsplit("/", 1)
        return Store(f"{scheme}://{parent}", sweep)
    path = Path(text).expanduser().absolute()
    return Store(str(path.parent), path.name)


def run_query(store: Store, sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of one SQL statement over the sweep's views (duckdb.Error on bad SQL)."""
    from .summary import connect

    con = connect(store)
    cur = con.execute(sql)
    if cur.description is None:  # a statement without a result
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.query", description=__doc__.split("\n")[0],
                                     epilog="views: sources, checkpoints, trials, generated, baselines")
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's folder, e.g. results/smoke or s3://...")
    parser.add_argument("sql", metavar="SQL", help="one SQL statement (DuckDB dialect)")
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output (default: table)")
    args = parser.parse_args(argv)

    import duckdb

    try:
        store = parse_results_dir(args.results_dir)
        if not store.files("sources") and not store.files("trials"):
            print(f"error: {args.results_dir}: no sweep tables here (expected {store.uri}/<table>/*/*.parquet)",
                  file=sys.stderr)
            return 2
        columns, rows = run_query(store, args.sql)
    except duckdb.Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ValueError, CorruptTable, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.format == "json":
        json.dump([dict(zip(columns, (_plain(v) for v in row))) for row in rows], sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    elif args.format == "csv":
        _write_csv(columns, rows, sys.stdout)
    else:
        _write_table(columns, rows, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
