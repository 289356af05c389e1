"""The tables' declared schemas, their version, and which columns are heavy: read off the column registry
(`orchestrator.store.columns`); the units and meanings each written file carries (`described`); the columns of
older sweeps under their names now (`current`)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from orchestrator.store.columns import COLUMNS, KNOB_TABLE, RENAMED, UNITS, Column
from pdiff.config import KNOB_DOCS

# 2: per-model wrong-prediction sets (`val_wrong`, `test_wrong`, packed bits, pdiff.evaluate.pack_wrong)
#    in checkpoints / generated / baselines and the split sizes (`n_val`, `n_test`) in sources; the
#    max-IoU columns say their split (`test_max_iou`, `val_max_iou`: were trials.novelty / val_novelty,
#    generated / baselines max_iou_to_train). Folders of version 1 are refused (`Store.check_schema`).
SCHEMA_VERSION = 2


def _metadata(c: Column) -> dict[bytes, bytes]:
    return {b"meaning": c.meaning.encode()} | ({b"unit": UNITS[c.unit].encode()} if c.unit else {})


# What each column's Parquet field metadata says: its unit (the reference's wording) and its one-line meaning.
_DOCS = {table: {c.name: _metadata(c) for c in columns} for table, columns in COLUMNS.items()}
_DOCS[KNOB_TABLE] |= {k: {b"meaning": doc.encode()} for k, doc in KNOB_DOCS.items()}


def described(table: str, schema: pa.Schema) -> pa.Schema:
    """`schema` with each column the registry (or pdiff.config, for a knob) knows carrying its `unit` and
    `meaning` as field metadata: what every file the store writes says of itself to pyarrow's readers.
    Readers never compare it (files written before it have none)."""
    docs = _DOCS[table]
    return pa.schema([f.with_metadata(docs[f.name]) if f.name in docs else f for f in schema],
                     metadata=schema.metadata)


# Each table's declared columns (`Column.declared`), in the order they are stored. Columns are only ever
# added, never retyped; a column added later (`trials.trial_index`, each p-diff knob of `trials`) is typed
# from its values when written (`Store.write`).
TABLES: dict[str, pa.Schema] = {
    table: described(table, pa.schema([(c.name, c.type) for c in columns if c.declared]))
    for table, columns in COLUMNS.items()}

# The columns that hold vectors and packed wrong-prediction sets: most of a sweep's bytes. Readers that
# need none of them name their columns (`Store.read(columns=...)`, `light_columns`); DuckDB's views
# read a column only where a query names it.
HEAVY = tuple(dict.fromkeys(c.name for columns in COLUMNS.values() for c in columns if c.heavy))


def current(table: str, data: pa.Table) -> pa.Table:
    """`data` with each column an older sweep stored under another name (RENAMED: `trials.val_acc`, a percent,
    is `val_acc_pct`) under its name now, in the same unit. Rows of files of both ages (a unified read) hold
    one of the two: merged into one column. The files themselves are never rewritten for it."""
    for old, new in RENAMED.get(table, {}).items():
        if old not in data.column_names:
            continue
        values = data.column(old)
        if new in data.column_names:
            values = pc.coalesce(data.column(new), values.cast(data.schema.field(new).type))
            data = data.drop_columns([new])
        data = data.set_column(data.column_names.index(old), pa.field(new, values.type), values)
    return data
