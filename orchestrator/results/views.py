"""DuckDB over a sweep's Parquet tables: one view per table, and the per-cell summary query."""

from __future__ import annotations

from typing import Iterable

import duckdb
import pyarrow as pa

from orchestrator.results import sql
from orchestrator.store.columns import COLUMNS, RENAMED
from orchestrator.store.errors import CorruptTable
from orchestrator.store.layout import HIDDEN, WRITER
from orchestrator.store.schema import HEAVY, TABLES
from orchestrator.store.tables import Store


def open_views(store: Store, tables: Iterable[str] | None = None) -> tuple[duckdb.DuckDBPyConnection, dict[str, str]]:
    """An in-memory DuckDB with a view per readable table (of `tables`, default all), and {table: one-line
    error} for the others.

    Local tables are read lazily by DuckDB itself; tables on an object store are
    read through pyarrow (which holds the credentials and endpoint) and registered as lazy datasets.
    Either way a column (`params`, the packed sets) is read only by a query that names it.
    A table with an unreadable file (e.g. truncated) gets no view: only queries
    that read it fail, with the error naming the file. Tables of another schema
    version are not read at all: OldTables (one line naming the folder).

    Each view holds every row once (`Store.layout`): the newest compacted file of each folder and the writer
    files it does not hold, less the compacted rows that a newer writer file replaces; the compacted files'
    own columns (`_writer`, `_written_ns`) are left out.
    """
    store.check_schema()
    con = duckdb.connect()
    corrupt: dict[str, str] = {}
    for table in tables or TABLES:
        try:
            layout = store.layout(table)
            # Local files: by real path, only regular files inside the sweep (no link out, no FIFO: sql.inside)
            files = sql.inside(store.root, layout.reads) if store.is_local else dict.fromkeys(layout.reads)
            hidden = f" EXCLUDE ({', '.join(HIDDEN)})" if set(layout.compacted.values()) & files.keys() else ""
            replaced = sorted(f"{path.rsplit('/', 2)[-2]}/{w}" for path, ws in layout.skip.items() if path in files
                              for w in ws)
            where = (f" WHERE {WRITER} IS NULL OR NOT list_contains([{', '.join(map(sql.literal, replaced))}], "
                     f"cell_id || '/' || {WRITER})") if replaced else ""
            if files and store.is_local:
                try:  # union_by_name reads every file's footer now, so a truncated file fails here
                    con.execute(f"CREATE VIEW {table} AS SELECT *{hidden} FROM read_parquet("
                                f"{sql.path_list(files.values())}, union_by_name = true){where}")
                except duckdb.Error as err:
                    try:  # raises CorruptTable naming the file, in the words of `tables`
                        store.read(table, columns=["cell_id"])
                    except (pa.ArrowException, OSError):
                        pass  # not a footer: DuckDB's own message (it names the file) says more
                    raise CorruptTable(f"{table}: {one_line(err)}") from None
            elif files:
                con.register(f"_{table}_files", store.dataset(table))
                con.execute(f"CREATE VIEW {table} AS SELECT *{hidden} FROM _{table}_files{where}")
            else:
                con.register(table, store.read(table))
            if files:
                current_names(con, table)
        except CorruptTable as err:
            corrupt[table] = one_line(err)
        except (pa.ArrowException, OSError) as err:  # e.g. a damaged page of an object-store file
            corrupt[table] = f"{table}: {one_line(err)}"
    return con, corrupt


def current_names(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    """Give a table's view each renamed column (RENAMED: `trials.val_acc`, a percent, is `val_acc_pct`) under
    its name now, where files of a sweep written before the rename hold the old name (with files of both ages,
    each row has one of the two: merged). Returns the old names found. The original view stays as
    `_<table>_as_stored`; the files are never rewritten for it."""
    renamed = RENAMED.get(table, {})
    have = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()] if renamed else []
    old = {o: n for o, n in renamed.items() if o in have}
    if not old:
        return []
    new = {n: o for o, n in old.items()}
    picked = []
    for c in have:
        if c in new:  # both names: one column
            picked.append(f'coalesce("{c}", "{new[c]}") AS "{c}"')
        elif c not in old:
            picked.append(f'"{c}"')
        elif old[c] not in have:  # the old name only: renamed in place
            picked.append(f'"{c}" AS "{old[c]}"')
    con.execute(f"ALTER VIEW {table} RENAME TO _{table}_as_stored")
    con.execute(f"CREATE VIEW {table} AS SELECT {', '.join(picked)} FROM _{table}_as_stored")
    return sorted(old)


def materialize(con: duckdb.DuckDBPyConnection, tables: Iterable[str] | None = None) -> None:
    """Copy each view's columns but the vectors and packed sets (schema.HEAVY) into a temporary table of the
    same name, which the connection reads from then on (temp shadows main): a report's dozen queries then
    scan each table's files once, not once a query (at 400 cells: 1.2 s once, instead of ~1 s a query).
    By default every table but `generated` (the report reads its many rows per cell, from the files).
    A table without a view (unreadable) is left as it is."""
    for table in tables or [t for t in TABLES if t != "generated"]:
        try:
            columns = [r[0] for r in con.execute(f"DESCRIBE main.{table}").fetchall()]
        except duckdb.Error:
            continue
        heavy = [c for c in HEAVY if c in columns]
        exclude = f" EXCLUDE ({', '.join(heavy)})" if heavy else ""
        try:
            con.execute(f"CREATE TEMP TABLE {table} AS SELECT *{exclude} FROM main.{table}")
        except duckdb.CatalogException:  # a registered in-memory table (no files): it is read once already
            continue


def connect(store: Store, tables: Iterable[str] | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with a view per table (`sources`, `checkpoints`, `trials`, ...; or of `tables`).

    Columns the summary reads that a sweep written before them lacks (COLLAPSE_COLUMNS) are NULL
    (`fill_missing_columns`). Raises CorruptTable (one line, naming the file) if any table has an
    unreadable file, OldTables if the tables are of another schema version."""
    con, corrupt = open_views(store, tables)
    if corrupt:
        con.close()
        raise CorruptTable(next(iter(corrupt.values())))
    fill_missing_columns(con)
    return con


# Arrow's types as DuckDB names them, for the typed NULLs below.
_DUCKDB_TYPES = {pa.float64(): "DOUBLE", pa.int64(): "BIGINT", pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR"}
# Columns added after the first sweeps were written that the summary reads (`Column.filled`: the collapse
# signals, the AE's stopping rule, the verdicts and 95% comparisons), by table, with their DuckDB types: NULL
# in folders written before them (and, for the comparisons with the baselines, in folders without baselines).
COLLAPSE_COLUMNS: dict[str, dict[str, str]] = {
    table: {c.name: _DUCKDB_TYPES[c.type] for c in columns if c.filled}
    for table, columns in COLUMNS.items() if any(c.filled for c in columns)}


def fill_missing_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[str]]:
    """Give each view the COLLAPSE_COLUMNS it lacks, as typed NULLs; returns {table: [columns added]}.

    A sweep written before a column existed then still summarises: its collapse signals read as
    unknown (NULL, shown as n/a), not as an error. The original view stays as `_<table>_stored`."""
    added: dict[str, list[str]] = {}
    for table, wanted in COLLAPSE_COLUMNS.items():
        try:
            have = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
        except duckdb.Error:  # no view (an unreadable table): the queries that read it say so
            continue
        missing = [c for c in wanted if c not in have]
        if not missing:
            continue
        con.execute(f"ALTER VIEW {table} RENAME TO _{table}_stored")
        nulls = ", ".join(f'NULL::{wanted[c]} AS "{c}"' for c in missing)
        con.execute(f"CREATE VIEW {table} AS SELECT *, {nulls} FROM _{table}_stored")
        added[table] = missing
    return added


def one_line(err: BaseException | str) -> str:
    """An error's first line (DuckDB appends the statement and a caret on further lines)."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__
