"""Compaction (orchestrator.store.tables: Store.compact, compact_sweep): each row is read exactly once before,
during (a crash at any point) and after it, a writer re-run after it wins, and nothing outside the cell's
table folder (nor anything it does not provably hold) is ever deleted. No Ray: synthetic writers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from orchestrator.results.views import open_views
from orchestrator.store.compaction import compact_sweep
from orchestrator.store.layout import COMPACT_PREFIX
from orchestrator.store.tables import Store

CELLS = ("mlp-digits-s0-aaaa0001", "mlp-digits-s1-aaaa0002")
TRIALS = [f"t{i:04d}" for i in range(10)]


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store(str(tmp_path / "results"), "sw", "hash1")
    s.write_marker()
    for c, cell in enumerate(CELLS):
        for i, trial in enumerate(TRIALS):
            # knobs typed differently across writers (int, then float): the reads unify them
            s.write("trials", cell, trial, [{"trial_id": trial, "status": "completed", "val_acc_pct": 10.0 * c + i,
                                             "latent_noise": i if i < 5 else i + 0.5}])
            s.write("generated", cell, trial, [{"trial_id": trial, "index": j, "test_acc": 0.5 + 0.01 * j,
                                                "params": [float(i), float(j)]} for j in range(3)])
    return s


def rows(store: Store, table: str = "trials") -> list[tuple]:
    """The table's rows as Store.read sees them, and (checked equal) as its DuckDB view does."""
    key = ["cell_id", "trial_id"] + (["index"] if table == "generated" else [])
    value = "val_acc_pct" if table == "trials" else "test_acc"
    arrow = sorted(tuple(r[c] for c in key + [value]) for r in store.read(table, columns=key + [value]).to_pylist())
    con, corrupt = open_views(store, [table])
    assert corrupt == {}
    duck = sorted(con.execute(f"SELECT {', '.join(key + [value])} FROM {table}").fetchall())
    con.close()
    assert duck == arrow
    return arrow


def expected(table: str = "trials") -> list[tuple]:
    if table == "trials":
        return sorted((cell, t, 10.0 * c + i) for c, cell in enumerate(CELLS) for i, t in enumerate(TRIALS))
    return sorted((cell, t, j, 0.5 + 0.01 * j) for cell in CELLS for t in TRIALS for j in range(3))


def listing(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rows_exactly_once_before_and_after_compaction(store):
    assert rows(store) == expected() and rows(store, "generated") == expected("generated")
    before = store.read("trials", CELLS[0]).to_pandas().sort_values("trial_id").reset_index(drop=True)

    assert compact_sweep(store) == 4 * len(TRIALS)  # two tables x two cells x ten writers
    for table in ("trials", "generated"):
        for cell in CELLS:
            names = os.listdir(store.path(table, cell))
            assert len(names) == 1 and names[0].startswith(COMPACT_PREFIX), names
    assert rows(store) == expected() and rows(store, "generated") == expected("generated")
    after = store.read("trials", CELLS[0]).to_pandas().sort_values("trial_id").reset_index(drop=True)
    assert list(after.columns) == list(before.columns)  # the compacted file's own columns stay hidden
    assert after.equals(before)
    assert store.read("generated", CELLS[0], columns=["params"]).num_rows == 3 * len(TRIALS)
    # Each row keeps its writer and its file's modification time.
    mine = store.read("trials", CELLS[0], writers=True).to_pydict()
    assert mine["_writer"] == mine["trial_id"] and all(t is not None for t in mine["_written_ns"])
    assert store.writer_ids("trials", CELLS[0]) == set(TRIALS)
    # Nothing new: compacting again does nothing (and rewrites nothing).
    files = listing(Path(store.root))
    assert compact_sweep(store) == 0 and listing(Path(store.root)) == files
    # A folder with fewer writer files than min_files is left as it is.
    store.write("trials", "small-cell", "t1", [{"trial_id": "t1"}])
    assert store.compact("trials", "small-cell") == 0 and os.listdir(store.path("trials", "small-cell")) == ["t1.parquet"]


def test_a_crash_at_any_point_leaves_each_row_once(store, monkeypatch, tmp_path):
    cell = CELLS[0]
    folder = Path(store.path("trials", cell))
    backup = tmp_path / "backup"
    shutil.copytree(folder, backup)

    # 1. While the compacted file is written: only a hidden temporary file exists, which readers skip.
    real = pq.write_table
    (folder / f".{COMPACT_PREFIX}000001-0123456789ab.parquet.dead.tmp").write_bytes(b"half a file")
    monkeypatch.setattr(pq, "write_table", lambda table, sink, **kw: (_ for _ in ()).throw(OSError("killed"))
                        if table.schema.metadata and b"pdiff_compact" in table.schema.metadata else real(table, sink, **kw))
    with pytest.raises(OSError):
        store.compact("trials", cell)
    monkeypatch.setattr(pq, "write_table", real)
    assert rows(store) == expected() and sorted(os.listdir(folder))[1:] == sorted(os.listdir(backup))

    # 2. After the rename, before any writer file is deleted: the compacted file replaces exactly them.
    monkeypatch.setattr(Store, "_remove_contained", lambda self, folder, compact: (_ for _ in ()).throw(
        KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.compact("trials", cell)
    monkeypatch.undo()
    assert sum(n.startswith(COMPACT_PREFIX) for n in os.listdir(folder)) == 1
    assert len(os.listdir(folder)) == len(TRIALS) + 2  # + the compacted file and the dead temporary file
    assert rows(store) == expected()
    assert store.writer_rows("trials", cell) == {store.path("trials", cell, f"{t}.parquet"): 1 for t in TRIALS}

    # 3. Halfway through the deletions: a later call finishes them; the rows never change.
    assert store.compact("trials", cell) == 0  # nothing new to merge, only leftovers to delete
    assert rows(store) == expected()
    compacted = next(n for n in os.listdir(folder) if n.startswith(COMPACT_PREFIX))
    for name in sorted(os.listdir(backup))[:4]:  # as if the deleting process had died after six of ten
        shutil.copy2(backup / name, folder / name)
    assert rows(store) == expected()
    assert store.compact("trials", cell) == 0
    assert sorted(n for n in os.listdir(folder) if not n.startswith(".")) == [compacted]
    assert rows(store) == expected()

    # 4. A second generation written, the first not yet deleted: the newest one is read, the older never.
    store.write("trials", cell, "t0003", [{"trial_id": "t0003", "status": "completed", "val_acc_pct": 3.0}])
    old = folder / compacted
    keep = old.read_bytes()
    monkeypatch.setattr(Store, "_remove_contained", lambda self, folder, compact: 0)
    store.compact("trials", cell)
    monkeypatch.undo()
    assert old.exists() and sum(n.startswith(COMPACT_PREFIX) for n in os.listdir(folder)) == 2
    assert rows(store) == expected()
    assert store.compact("trials", cell) == 0 and not old.exists()  # named as absorbed: deleted now
    assert [n for n in os.listdir(folder) if not n.startswith(".")] != [compacted]
    # An older generation that the newest does not name as absorbed is never deleted (nor read).
    stray = folder / f"{COMPACT_PREFIX}000000-ffffffffffff.parquet"
    stray.write_bytes(keep)
    assert rows(store) == expected()
    store.compact("trials", cell)
    assert stray.exists()


def test_a_rerun_after_compaction_wins(store):
    cell = CELLS[1]
    compact_sweep(store)
    # A re-run trial rewrites its own file: its new row replaces the compacted one, in every reader.
    store.write("trials", cell, "t0002", [{"trial_id": "t0002", "status": "completed", "val_acc_pct": 99.0}])
    want = sorted([r for r in expected() if r[:2] != (cell, "t0002")] + [(cell, "t0002", 99.0)])
    assert rows(store) == want
    assert store.read_writer(store.path("trials", cell, "t0002.parquet"))[0]["val_acc_pct"] == 99.0
    # A deleted writer (a failed re-run drops its generated rows) leaves a tombstone that hides its rows.
    store.delete("generated", cell, "t0004")
    assert [r for r in rows(store, "generated") if r[:2] == (cell, "t0004")] == []
    assert "t0004" not in store.writer_ids("generated", cell)
    assert len(rows(store, "generated")) == len(expected("generated")) - 3
    # A quarantined writer held only by the compacted file: its rows move aside as a file of their own.
    target = store.quarantine(store.path("trials", cell, "t0007.parquet"), "a test")
    assert pq.read_table(target).column("trial_id").to_pylist() == ["t0007"]
    want = [r for r in want if r[:2] != (cell, "t0007")]
    assert rows(store) == want
    # Compacting again absorbs them all: one file per folder, the same rows.
    assert compact_sweep(store) == 3
    for table in ("trials", "generated"):
        assert len(os.listdir(store.path(table, cell))) == 1
    assert rows(store) == want and len(rows(store, "generated")) == len(expected("generated")) - 3
    # The stage-2 orphan sweep works by writer: compacted generated rows of committed trials stay.
    from orchestrator.stage2.search import drop_orphans

    drop_orphans(store, SimpleNamespace(cell_id=cell))
    assert len(rows(store, "generated")) == len(expected("generated")) - 3 - 3  # t0007's rows were orphans
    assert store.writer_ids("generated", cell) == store.writer_ids("trials", cell) - {"t0004"}


def test_nothing_is_deleted_outside_the_cells_table_folder(store, tmp_path):
    cell = CELLS[0]
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "t0099.parquet").write_bytes(Path(store.path("trials", cell, "t0001.parquet")).read_bytes())
    # A writer file that is a symbolic link out of the folder, a file no compacted file holds, a non-Parquet
    # file, and a cell folder that is a link elsewhere.
    os.symlink(outside / "t0099.parquet", store.path("trials", cell, "t0099.parquet"))
    Path(store.path("trials", cell, "notes.txt")).write_text("mine")
    linked = Path(store.path("trials", "linked-cell"))
    os.symlink(outside, linked)
    root = Path(store.root)
    before = listing(tmp_path)

    with pytest.raises(ValueError):
        store.compact("trials", "linked-cell")
    for bad in ("../outside", "..", ".hidden", "a/b"):
        with pytest.raises(ValueError):
            store.compact("trials", bad)
    store.compact("trials", cell)

    after = listing(tmp_path)
    folder = str(Path(store.path("trials", cell)).relative_to(tmp_path)) + "/"
    gone = set(before) - set(after)
    assert gone and all(g.startswith(folder) for g in gone), gone  # deleted: inside that folder only
    assert {g.rsplit("/", 1)[1] for g in gone} == {f"{t}.parquet" for t in TRIALS}  # exactly what it holds
    assert all(after[k] == v for k, v in before.items() if k in after)  # nothing else changed
    assert (outside / "t0099.parquet").is_file() and Path(store.path("trials", cell, "notes.txt")).is_file()
    assert os.path.islink(store.path("trials", cell, "t0099.parquet"))
    assert not any(str(p).startswith(str(root / "generated")) for p in map(Path, gone))


def test_heal_works_by_writer_in_compacted_cells(finished_sweep, tiny_spec, tmp_path):
    """The tiny sweep's tables compacted (every folder, min_files=2): the reconcile step before a re-run finds
    nothing to do; a trial whose generated rows are gone from a compacted file is re-run (its trials row moved
    to quarantine, as its own file), the other trials of the cell stay; a second pass finds nothing."""
    from test_healing import _quarantined
    from tiny_sweep import copy_sweep

    from orchestrator.runtime.heal import reconcile

    spec, store = copy_sweep(finished_sweep, tiny_spec, tmp_path)
    before = store.read("trials", columns=["cell_id", "trial_id", "val_acc_pct"]).to_pylist()
    assert compact_sweep(store, min_files=2) > 0
    b = spec.cells[1].cell_id
    assert [n.startswith(COMPACT_PREFIX) for n in os.listdir(store.path("trials", b))] == [True]
    assert sorted(store.read("trials", columns=["cell_id", "trial_id", "val_acc_pct"]).to_pylist(),
                  key=str) == sorted(before, key=str)
    lines: list[str] = []
    reconcile(spec, store, lines.append)
    assert lines == [] and _quarantined(store) == []

    lost = sorted(store.writer_ids("generated", b))[0]
    store.delete("generated", b, lost)  # a tombstone: the compacted file still holds the bytes
    reconcile(spec, store, lines.append)
    assert any(f"trial {lost} of cell {b}: no generated file" in line for line in lines), lines
    assert f"trials/{b}/{lost}.parquet" in _quarantined(store)
    left = store.read("trials", columns=["cell_id", "trial_id"]).to_pylist()
    assert len(left) == len(before) - 1 and {"cell_id": b, "trial_id": lost} not in left
    again: list[str] = []
    reconcile(spec, store, again.append)
    assert again == []
