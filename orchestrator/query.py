"""`python -m orchestrator.query RESULTS_DIR "SQL" [--format table|csv|json]`: DuckDB over a sweep's tables.

Each table is a view by its name: `sources`, `checkpoints`, `trials`, `generated`,
`baselines` (see `orchestrator.tables` for their columns). For example:

    python -m orchestrator.query results/smoke "SELECT cell_id, trial_id, val_acc, val_max_iou FROM trials ORDER BY val_acc DESC"

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
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from .console import ArgumentParser, refuse, run
from .sql import glob_escaped, inside, literal
from .tables import TABLES, CorruptTable, OldTables, Store

__all__ = ["QueryRefused", "check_sql", "parse_results_dir", "run_query", "sweep_folder", "tables_read",
           "unique_names", "main"]


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


class QueryRefused(ValueError):
    """A query that is not exactly one read-only SELECT (or is empty)."""


@lru_cache(maxsize=None)
def _parser_db() -> "duckdb.DuckDBPyConnection":
    """An empty in-memory DuckDB that only parses, a cursor of it per use (a connection costs 50-200 ms)."""
    import duckdb

    return duckdb.connect()


def check_sql(sql: str) -> "duckdb.Statement":
    """The one SELECT statement of `sql`, parsed by DuckDB; QueryRefused for anything else.

    DESCRIBE, SUMMARIZE, SHOW, VALUES, WITH ... SELECT and FROM-first queries parse as SELECT and
    pass; COPY, ATTACH, DETACH, INSTALL, LOAD, EXPORT, IMPORT, CREATE, INSERT, UPDATE, DELETE, DROP,
    ALTER, SET, RESET, PRAGMA, CALL, EXPLAIN (ANALYZE runs its statement), transactions do not.
    duckdb.ParserException on a syntax error."""
    import duckdb

    if not sql.strip():
        raise QueryRefused('empty SQL: give one SELECT statement, e.g. "SELECT count(*) FROM trials"')
    try:
        sql.encode()
    except UnicodeEncodeError as err:  # undecodable bytes in argv
        raise QueryRefused(f"the SQL is no UTF-8 text (character {err.start + 1})") from None
    with _parser_db().cursor() as parser:  # parses only: nothing is bound or run
        statements = parser.extract_statements(sql)
    if not statements:
        raise QueryRefused('empty SQL (only comments or semicolons): give one SELECT statement, '
                           'e.g. "SELECT count(*) FROM trials"')
    if len(statements) > 1:
        raise QueryRefused(f"exactly one statement per query, got {len(statements)}: run them one at a time")
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        words = statement.query.split()
        keyword = words[0].upper() if words else statement.type.name
        raise QueryRefused(f"{keyword} refused: queries are read-only, only a SELECT (or DESCRIBE, SUMMARIZE, "
                           f"SHOW) is run")
    return statement


def tables_read(sql: str) -> set[str]:
    """The sweep tables that a SELECT names (from DuckDB's parse tree; a CTE of the same name counts too)."""
    with _parser_db().cursor() as parser:
        text = parser.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()[0]
    try:
        nodes = [json.loads(text)]
    except RecursionError:  # DuckDB parses deeper than Python's JSON decoder reads
        raise QueryRefused("the query nests too deeply (its parse tree is deeper than Python's recursion limit): "
                           "flatten it, e.g. with WITH ... AS (...) steps") from None
    found: set[str] = set()
    while nodes:  # a walk without recursion
        node = nodes.pop()
        if isinstance(node, dict):
            if node.get("type") == "BASE_TABLE" and isinstance(node.get("table_name"), str):
                found.add(node["table_name"].lower())
            nodes.extend(node.values())
        elif isinstance(node, list):
            nodes.extend(node)
    return found & set(TABLES)


def _read_only(con, store: Store, temp_dir: str, tables: Sequence[str] = tuple(TABLES)) -> None:
    """Lock the connection down after its views exist: no file outside the tables' own files can be read
    or written (the private `temp_dir` aside, for spilling), no extension loaded, no setting changed.

    Allowed: the real path of each file the views read (`sql.inside`: regular files inside the sweep's real
    folder, no link out), as itself and as the pattern that matches only it (`sql.path_list`: DuckDB checks
    both)."""
    real = [r for t in tables for r in inside(store.root, store.files(t)).values()] if store.is_local else []
    paths = sorted({p for r in real for p in (r, glob_escaped(r))})
    con.execute(f"SET temp_directory = {literal(temp_dir)}")
    con.execute(f"SET allowed_directories = [{literal(temp_dir.rstrip('/') + '/')}]")
    con.execute(f"SET allowed_paths = [{', '.join(map(literal, paths))}]")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def run_query(store: Store, sql: str) -> tuple[list[str], list[tuple]]:
    """Column names and rows of one read-only SELECT over the sweep's views.

    QueryRefused for anything but exactly one SELECT; duckdb.Error on bad SQL; CorruptTable (naming
    the file) when the query reads a table with an unreadable file (other tables still answer)."""
    import duckdb

    from .summary import one_line, open_views

    statement = check_sql(sql)
    wanted = tables_read(statement.query)
    # Views only for the tables the query names (as a word anywhere: query_table('generated') too); a query
    # naming none (SHOW TABLES, a catalog function) gets them all. Each view costs a listing of its files.
    named = wanted | {t for t in TABLES if re.search(rf"\b{t}\b", statement.query, flags=re.IGNORECASE)}
    opened = [t for t in TABLES if t in named] or list(TABLES)
    con, corrupt = open_views(store, opened)
    temp_dir = tempfile.mkdtemp(prefix="pdiff-query-")
    try:
        hit = sorted(wanted & set(corrupt))
        if hit:  # only a query that reads a damaged table fails
            raise CorruptTable(corrupt[hit[0]])
        _read_only(con, store, temp_dir, opened)
        try:
            cur = con.execute(statement.query)
        except duckdb.CatalogException as err:  # e.g. query_table('generated'): named in a string
            for table, why in corrupt.items():
                if table in str(err):
                    raise CorruptTable(why) from None
            raise
        except duckdb.PermissionException as err:
            raise QueryRefused(f"{one_line(err)} (a query reads only this sweep's tables: "
                               f"{', '.join(TABLES)})") from None
        if cur.description is None:  # a statement without a result
            return [], []
        return unique_names([d[0] for d in cur.description]), cur.fetchall()
    finally:
        con.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def unique_names(columns: Sequence[str]) -> list[str]:
    """Output names made unique as DuckDB makes a table's (`a, a, A` -> `a, a_1, A_2`): a join's two `cell_id`
    columns are both printed, in every format."""
    taken: set[str] = set()
    suffix: dict[str, int] = {}
    out = []
    for name in columns:
        new = name
        while new.lower() in taken:
            suffix[name.lower()] = suffix.get(name.lower(), 0) + 1
            new = f"{name}_{suffix[name.lower()]}"
        taken.add(new.lower())
        out.append(new)
    return out


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


def _line(err: BaseException) -> str:
    """An error as one printable line: DuckDB's message without the statement and caret it appends ("LINE 1:
    ..."), other line breaks as spaces, control characters (of a path, of the SQL) escaped."""
    text = re.split(r"\n\s*LINE \d+:", str(err))[0].strip()
    return "".join(c if c.isprintable() else " " if c in "\r\n" else ascii(c)[1:-1] for c in text) or \
        type(err).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m orchestrator.query", description=__doc__.split("\n")[0],
                            epilog="views: sources, checkpoints, trials, generated, baselines")
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
