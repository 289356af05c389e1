"""The tables' declared schemas, their version, and which columns are heavy: read off the column registry
(`orchestrator.store.columns`)."""

from __future__ import annotations

import pyarrow as pa

from orchestrator.store.columns import COLUMNS

# 2: per-model wrong-prediction sets (`val_wrong`, `test_wrong`, packed bits, pdiff.evaluate.pack_wrong)
#    in checkpoints / generated / baselines and the split sizes (`n_val`, `n_test`) in sources; the
#    max-IoU columns say their split (`test_max_iou`, `val_max_iou`: were trials.novelty / val_novelty,
#    generated / baselines max_iou_to_train). Folders of version 1 are refused (`Store.check_schema`).
SCHEMA_VERSION = 2

# Each table's declared columns (`Column.declared`), in the order they are stored. Columns are only ever
# added, never retyped; a column added later (`trials.trial_index`, each p-diff knob of `trials`) is typed
# from its values when written (`Store.write`).
TABLES: dict[str, pa.Schema] = {
    table: pa.schema([(c.name, c.type) for c in columns if c.declared]) for table, columns in COLUMNS.items()}

# The columns that hold vectors and packed wrong-prediction sets: most of a sweep's bytes. Readers that
# need none of them name their columns (`Store.read(columns=...)`, `light_columns`); DuckDB's views
# read a column only where a query names it.
HEAVY = tuple(dict.fromkeys(c.name for columns in COLUMNS.values() for c in columns if c.heavy))
