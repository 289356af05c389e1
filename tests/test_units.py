"""One unit per column name: an accuracy is a fraction (0..1) unless its name ends in `_pct` (a percent); every
Parquet file the store writes says each column's unit and meaning in its fields' metadata; and a sweep written
before the trials table's percents took their `_pct` suffix (`trials.val_acc`, ...) still reads, resumes,
compacts and heals under the new names, its files left as they are."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_sweep import copy_sweep

from orchestrator.query import main
from orchestrator.results.report import summary_table
from orchestrator.results.views import connect, open_views
from orchestrator.store.columns import COLUMNS, RENAMED, UNITS
from orchestrator.store.compaction import compact_sweep
from orchestrator.store.layout import COMPACT_PREFIX
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store
from pdiff.config import KNOB_DOCS

OLD = RENAMED["trials"]  # {old name: new name}


def test_every_accuracy_column_is_a_fraction_or_named_pct():
    for table, columns in COLUMNS.items():
        for c in columns:
            assert (c.unit == "percent") == c.name.endswith("_pct"), (table, c.name, c.unit)
            if c.name.endswith("_acc"):
                assert c.unit == "fraction", (table, c.name, c.unit)
    assert set(OLD.values()) == {c.name for c in COLUMNS["trials"] if c.unit == "percent"}
    assert set(OLD) == {"val_acc", "selected_acc", "best_test_acc", "mean_acc", "median_acc", "val_mean_acc",
                        "latent_gaussian_mean_acc"}


def test_a_trial_stores_its_percents_under_pct(tmp_path):
    """pdiff's summary and the Tune metrics name the percents without the suffix; the trials row has it."""
    from types import SimpleNamespace

    from orchestrator.stage2.trial import trials_row

    measures = {"selected_acc": 96.5, "best_test_acc": 98.0, "mean_acc": 95.0, "median_acc": 95.5,
                "val_acc": 97.2, "val_mean_acc": 94.0, "latent_gaussian_mean_acc": 90.0, "val_max_iou": 0.8}
    row = trials_row(SimpleNamespace(search_hash="s"), "t1", 0, {"latent_dim": 16}, "completed", measures)
    assert {k: row[v] for k, v in OLD.items()} == {k: measures[k] for k in OLD}
    assert not set(OLD) & set(row) and row["val_max_iou"] == 0.8 and row["latent_dim"] == 16
    Store(str(tmp_path), "sw", "h").write("trials", "c", "t1", [row])  # the store takes it as it is


def _units(path) -> dict[str, tuple[str | None, str | None]]:
    """{column: (unit, meaning)} from a Parquet file's own schema, as a pyarrow user reads it."""
    out = {}
    for f in pq.read_schema(path):
        meta = f.metadata or {}
        out[f.name] = tuple(meta[k].decode() if k in meta else None for k in (b"unit", b"meaning"))
    return out


def test_written_files_carry_unit_and_meaning(tmp_path):
    store = Store(str(tmp_path), "sw", "h")
    trial = store.write("trials", "c", "t1", [{"trial_id": "t1", "status": "completed", "val_acc_pct": 97.5,
                                               "verdict": "novel", "latent_dim": 16}])
    gen = store.write("generated", "c", "t1", [{"trial_id": "t1", "index": 0, "val_acc": 0.975}])
    units = _units(trial)
    assert units["val_acc_pct"][0] == UNITS["percent"] == "% 0..100"
    assert units["val_acc_pct"][1].startswith("best validation accuracy")
    assert units["test_max_iou"][0] == "0..1" and units["verdict"][1].startswith("collapsed: one model")
    assert units["latent_dim"] == (None, KNOB_DOCS["latent_dim"])  # a knob: pdiff.config's meaning
    assert units["trial_id"][0] is None and units["trial_id"][1]  # no unit, a meaning
    assert _units(gen)["val_acc"][0] == UNITS["fraction"] == "fraction 0..1"
    # Written under the new name only: the old one is refused, not stored beside it.
    with pytest.raises(ValueError, match="val_acc_pct"):
        store.write("trials", "c", "t2", [{"trial_id": "t2", "val_acc": 90.0}])
    # The readers compare types, never metadata: a file without any (an older sweep's) unifies with these.
    bare = pa.table({"cell_id": ["c"], "trial_id": ["t0"], "val_acc_pct": [96.0]})
    pq.write_table(bare, store.path("trials", "c", "t0.parquet"))
    assert sorted(store.read("trials").column("val_acc_pct").to_pylist()) == [96.0, 97.5]


def _write_old(path: str) -> None:
    """Rewrite a trials file as pdiff-sweep wrote it before the `_pct` suffix: the same percents under the old
    names, no field metadata."""
    data = pq.read_table(path)
    back = {new: old for old, new in OLD.items()}
    fields = [pa.field(back.get(f.name, f.name), f.type) for f in data.schema]
    pq.write_table(pa.Table.from_arrays(data.columns, schema=pa.schema(fields)), path, compression="zstd")


def test_an_old_trials_table_reads_with_one_name_and_one_unit(tmp_path):
    """A sweep whose trials files are all old: Store.read and the DuckDB views rename, not merge."""
    store = Store(str(tmp_path), "sw", "h")
    path = store.write("trials", "c", "t1", [{"trial_id": "t1", "status": "completed", "val_acc_pct": 97.5,
                                              "mean_acc_pct": 96.0, "val_mean_acc_pct": 95.0}])
    _write_old(path)
    assert {"val_acc", "mean_acc", "val_mean_acc"} <= set(pq.read_schema(path).names)
    data = store.read("trials")
    assert not set(OLD) & set(data.column_names)
    assert data.column("val_acc_pct").to_pylist() == [97.5] and data.column("val_mean_acc_pct").to_pylist() == [95.0]
    assert store.read("trials", columns=["mean_acc_pct", "trial_id"]).to_pylist() == [
        {"mean_acc_pct": 96.0, "trial_id": "t1"}]
    assert store.read_writer(path)[0]["val_acc_pct"] == 97.5
    con = connect(store)
    columns = [r[0] for r in con.execute("DESCRIBE trials").fetchall()]
    assert not set(OLD) & set(columns) and columns.count("val_acc_pct") == 1
    assert con.execute("SELECT val_acc_pct, mean_acc_pct, val_mean_acc_pct FROM trials").fetchall() == [
        (97.5, 96.0, 95.0)]


@pytest.fixture
def mixed(finished_sweep, tiny_spec, tmp_path):
    """A copy of the tiny sweep whose first cell's trials files are rewritten in the old format (the second
    cell's stay new), with what every reader said of it before."""
    spec, store = copy_sweep(finished_sweep, tiny_spec, tmp_path)
    before = {"summary": summary_table(store)[0], "rows": _trial_rows(store), "files": {}}
    old_cell = spec.cells[0].cell_id
    for path in store.files("trials", old_cell):
        _write_old(path)
        before["files"][path] = Path(path).read_bytes()
    return spec, store, before


def _trial_rows(store: Store) -> list[tuple]:
    columns = ["cell_id", "trial_id", *OLD.values()]
    arrow = sorted(tuple(r.values()) for r in store.read("trials", columns=columns).to_pylist())
    con, corrupt = open_views(store, ["trials"])
    assert corrupt == {}
    duck = sorted(con.execute(f"SELECT {', '.join(columns)} FROM trials").fetchall())
    assert [a[:2] for a in arrow] == [d[:2] for d in duck]
    return arrow


def test_old_and_new_trials_files_read_alike(mixed):
    spec, store, before = mixed
    assert all(set(OLD) <= set(pq.read_schema(p).names) for p in before["files"])
    new_files = [p for p in store.files("trials") if p not in before["files"]]
    assert new_files and not any(set(OLD) & set(pq.read_schema(p).names) for p in new_files)
    rows = _trial_rows(store)
    assert rows == before["rows"]
    assert all(50 <= r[2] <= 100 for r in rows)  # val_acc_pct: percents, in the old files as in the new
    con = connect(store)
    columns = [r[0] for r in con.execute("DESCRIBE trials").fetchall()]
    assert not set(OLD) & set(columns) and all(columns.count(n) == 1 for n in OLD.values())
    assert summary_table(store)[0].equals(before["summary"])
    for path, data in before["files"].items():  # read, never rewritten
        assert Path(path).read_bytes() == data


def test_old_trials_files_resume_compact_and_heal(mixed):
    from orchestrator.runtime.heal import reconcile
    from orchestrator.stage2.search import finished_trials
    from orchestrator.stage2.study import rebuild_study

    spec, store, before = mixed
    cell = spec.cells[0]
    finished = finished_trials(store, spec, cell)
    assert len(finished) == 3 and all(50 <= r["val_acc_pct"] <= 100 and "val_acc" not in r for r in finished)
    storage, name, _, _ = rebuild_study(spec, cell, finished)
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    by_id = {r["trial_id"]: r for r in finished}
    assert sorted(t.values for t in study.trials) == sorted(
        [by_id[t.user_attrs["trial_id"]]["val_acc_pct"], by_id[t.user_attrs["trial_id"]]["val_max_iou"]]
        for t in study.trials)

    lines: list[str] = []
    reconcile(spec, store, lines.append)
    assert lines == [], lines
    assert compact_sweep(store, ["trials"], min_files=2) > 0  # the store's compaction: the old files merged in
    folder = store.path("trials", cell.cell_id)
    [compacted] = [n for n in os.listdir(folder) if not n.startswith(".")]
    assert compacted.startswith(COMPACT_PREFIX)
    units = _units(f"{folder}/{compacted}")
    assert not set(OLD) & set(units) and units["val_acc_pct"][0] == "% 0..100"
    assert _trial_rows(store) == before["rows"]
    assert summary_table(store)[0].equals(before["summary"])


def test_a_join_says_percent_and_fraction_by_name(finished_sweep, capsys):
    pair = ("SELECT t.val_acc_pct, g.val_acc FROM trials t JOIN generated g USING (cell_id, trial_id) "
            "WHERE t.status = 'completed'")
    assert main([finished_sweep.root, pair, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(list(r) == ["val_acc_pct", "val_acc"] for r in rows)
    assert all(50 <= r["val_acc_pct"] <= 100 and 0 <= r["val_acc"] <= 1 for r in rows)
    sql = ("SELECT t.trial_id, t.val_acc_pct, max(g.val_acc) AS val_acc FROM trials t JOIN generated g "
           "USING (cell_id, trial_id) WHERE t.status = 'completed' GROUP BY t.trial_id, t.val_acc_pct")
    assert main([finished_sweep.root, sql, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows and all(list(r) == ["trial_id", "val_acc_pct", "val_acc"] for r in rows)
    for r in rows:  # the trial's percent is its best generated model's fraction, x 100
        assert 1 < r["val_acc_pct"] <= 100 and 0 <= r["val_acc"] <= 1
        assert r["val_acc_pct"] == pytest.approx(100 * r["val_acc"], abs=1e-6)
    # The trials table has no `val_acc` left to confuse with generated's fraction.
    assert main([finished_sweep.root, "SELECT t.val_acc FROM trials t"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "val_acc" in err
    assert "val_acc_pct" in TABLES["trials"].names and "val_acc" not in TABLES["trials"].names
