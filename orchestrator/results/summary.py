"""The per-cell summary the sweep prints and the report starts from."""

from __future__ import annotations

from orchestrator.results import sql
from orchestrator.results.query import tables_read
from orchestrator.results.views import connect
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store


def summary(store: Store):
    """The per-cell summary as a pandas DataFrame (accuracies in percent): `orchestrator.results.sql.summary_sql()`."""

    query = sql.summary_sql()
    return connect(store, [t for t in TABLES if t in tables_read(query)]).execute(query).df()  # views it reads
