"""Read-only SQL over a sweep's tables: exactly one SELECT, on views of the Parquet files."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from functools import lru_cache
from typing import Sequence

import duckdb

from orchestrator.results.sql import glob_escaped, inside, literal
from orchestrator.results.views import one_line, open_views
from orchestrator.store.errors import CorruptTable
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store


class QueryRefused(ValueError):
    """A query that is not exactly one read-only SELECT (or is empty)."""


@lru_cache(maxsize=None)
def _parser_db() -> "duckdb.DuckDBPyConnection":
    """An empty in-memory DuckDB that only parses, a cursor of it per use (a connection costs 50-200 ms)."""
    return duckdb.connect()


def check_sql(sql: str) -> "duckdb.Statement":
    """The one SELECT statement of `sql`, parsed by DuckDB; QueryRefused for anything else.

    DESCRIBE, SUMMARIZE, SHOW, VALUES, WITH ... SELECT and FROM-first queries parse as SELECT and
    pass; COPY, ATTACH, DETACH, INSTALL, LOAD, EXPORT, IMPORT, CREATE, INSERT, UPDATE, DELETE, DROP,
    ALTER, SET, RESET, PRAGMA, CALL, EXPLAIN (ANALYZE runs its statement), transactions do not.
    duckdb.ParserException on a syntax error."""
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
