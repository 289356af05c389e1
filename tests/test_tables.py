"""Parquet tables: one immutable file per writer, atomic replacement, unified knob columns, corrupt files.

A Store on tmp_path (and one on pyarrow's in-memory `mock://` filesystem); no Ray.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from orchestrator.store.errors import CorruptTable
from orchestrator.store.schema import SCHEMA_VERSION, TABLES
from orchestrator.store.tables import Store

COMMON = ["sweep", "spec_hash", "schema_version", "cell_id"]


def value_of(kind: pa.DataType, i: int):
    """A value of an Arrow type that survives a round trip exactly (float32 included)."""
    if pa.types.is_string(kind):
        return f"v{i}"
    if pa.types.is_integer(kind):
        return 10 + i
    if pa.types.is_floating(kind):
        return 0.25 * (i + 1)
    if pa.types.is_list(kind):
        return [value_of(kind.value_type, i), value_of(kind.value_type, i + 1)]
    if pa.types.is_boolean(kind):
        return i % 2 == 0
    if pa.types.is_timestamp(kind):  # the runs table's UTC times
        return datetime(2026, 1, 1, 12, i, tzinfo=timezone.utc)
    if pa.types.is_binary(kind):  # a packed wrong-prediction set
        return bytes([i % 256, 0b1010_0000])
    raise AssertionError(f"no sample value for {kind}")


def rows_for(table: str, n: int = 3, offset: int = 0) -> list[dict]:
    """n rows with every non-common column of `table` filled."""
    schema = TABLES[table]
    return [{f.name: value_of(f.type, i + offset) for f in schema if f.name not in COMMON} for i in range(n)]


def all_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(str(tmp_path / "results"), "sw", "hash123")


def test_common_columns_come_first_in_every_table():
    for table, schema in TABLES.items():
        assert schema.names[:4] == COMMON, table
        assert len(set(schema.names)) == len(schema.names), table


@pytest.mark.parametrize("table", list(TABLES))
def test_round_trip(store, table):
    rows = rows_for(table)
    path = store.write(table, "cell-a", "writer-1", rows)
    assert path == store.path(table, "cell-a", "writer-1.parquet")
    assert Path(path).is_file()
    assert path.startswith(str(Path(store.storage) / "sw" / table / "cell-a"))

    data = store.read(table)
    assert data.schema == TABLES[table]
    expected = [{"sweep": "sw", "spec_hash": "hash123", "schema_version": SCHEMA_VERSION, "cell_id": "cell-a"}
                | row for row in rows]
    assert data.to_pylist() == expected
    # The file itself carries the schema, typed as declared (not as inferred from Python values).
    assert pq.read_schema(path).field("schema_version").type == pa.int32()


def test_a_row_of_no_cell_has_its_own_file(store):
    """The `runs` table: no cell, so `runs/<run_id>.parquet` with a null cell_id; a writer replaces its file."""
    path = store.write("runs", None, "r1", rows_for("runs", 1))
    assert path == store.path("runs", "r1.parquet")
    store.write("runs", None, "r1", rows_for("runs", 1, offset=5))
    store.write("runs", None, "r2", rows_for("runs", 1))
    assert store.files("runs") == [path, store.path("runs", "r2.parquet")]
    rows = store.read("runs").to_pylist()
    assert [r["cell_id"] for r in rows] == [None, None]
    assert rows[0] == {"sweep": "sw", "spec_hash": "hash123", "schema_version": SCHEMA_VERSION, "cell_id": None} \
        | rows_for("runs", 1, offset=5)[0]


@pytest.mark.parametrize("table", list(TABLES))
def test_missing_columns_are_null(store, table):
    store.write(table, "c", "w", [{}])
    data = store.read(table).to_pylist()
    assert len(data) == 1
    assert data[0]["cell_id"] == "c" and data[0]["sweep"] == "sw"
    assert all(v is None for k, v in data[0].items() if k not in COMMON)


def test_read_one_cell_and_some_columns(store):
    store.write("trials", "cell-a", "t1", rows_for("trials", 2))
    store.write("trials", "cell-b", "t1", rows_for("trials", 3))
    assert store.read("trials").num_rows == 5
    assert store.read("trials", "cell-a").num_rows == 2
    assert set(store.read("trials", "cell-b").column("cell_id").to_pylist()) == {"cell-b"}
    part = store.read("trials", columns=["cell_id", "val_acc_pct"])
    assert part.column_names == ["cell_id", "val_acc_pct"] and part.num_rows == 5
    frame = store.read_pandas("trials", "cell-a")
    assert len(frame) == 2 and list(frame.columns) == TABLES["trials"].names


def test_same_writer_replaces_its_file(store):
    store.write("generated", "c", "t1", [r | {"trial_id": "t1"} for r in rows_for("generated", 4)])
    store.write("generated", "c", "t2", [r | {"trial_id": "t2"} for r in rows_for("generated", 2)])
    store.write("generated", "c", "t1", [r | {"trial_id": "t1", "val_acc": 0.75}
                                         for r in rows_for("generated", 4, offset=5)])
    data = store.read("generated")
    assert data.num_rows == 6
    assert len(store.files("generated", "c")) == 2
    t1 = [r for r in data.to_pylist() if r["trial_id"] == "t1"]
    assert [r["index"] for r in t1] == [15, 16, 17, 18]
    assert {r["val_acc"] for r in t1} == {0.75}
    assert [r["index"] for r in data.to_pylist() if r["trial_id"] == "t2"] == [10, 11]


def test_fewer_rows_replace_more(store):
    store.write("checkpoints", "c", "snapshots", rows_for("checkpoints", 5))
    store.write("checkpoints", "c", "snapshots", rows_for("checkpoints", 1, offset=9))
    assert store.read("checkpoints").column("index").to_pylist() == [19]


def test_no_temporary_files_are_left_behind(store):
    for i in range(3):
        store.write("trials", "c", "t", rows_for("trials", 2, offset=i))
        store.write("baselines", "c", "baselines", rows_for("baselines"))
    store.write_bytes("models/c/source.pt", b"weights")
    files = all_files(Path(store.root))
    assert len(files) == 3
    assert not [p for p in Path(store.root).rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(store):
    store.write_bytes("models/c/source.pt", b"good")
    with pytest.raises(TypeError):
        store.write_bytes("models/c/source.pt", object())  # fails while the temporary is open
    assert store.read_bytes("models/c/source.pt") == b"good"
    assert [p.name for p in all_files(Path(store.root))] == ["source.pt"]


def test_a_failed_table_write_keeps_the_previous_rows(store):
    store.write("trials", "c", "t", [{"trial_id": "t", "val_acc_pct": 50.0}])
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        store.write("trials", "c", "t", [{"trial_id": "t", "val_acc_pct": "not a number"}])
    assert store.read("trials").column("val_acc_pct").to_pylist() == [50.0]
    assert len(all_files(Path(store.root))) == 1


def test_hidden_leftovers_are_not_read(store):
    store.write("trials", "c", "t", rows_for("trials", 1))
    leftover = Path(store.path("trials", "c", ".t.parquet.0123.tmp"))
    leftover.write_bytes(b"half a file")
    assert store.files("trials") == [store.path("trials", "c", "t.parquet")]
    assert store.read("trials").num_rows == 1
    assert store.check()["trials"] == 1


def test_knob_columns_are_unified_across_files(store):
    core = {"status": "completed", "val_acc_pct": 90.0}
    store.write("trials", "c", "t1", [core | {"trial_id": "t1", "latent_dim": 32, "sampler": "ddim"}])
    store.write("trials", "c", "t2", [core | {"trial_id": "t2", "ae_lr": 0.001, "ae_channels": [8, 16]}])
    store.write("trials", "d", "t3", [core | {"trial_id": "t3"}])
    data = store.read("trials")
    assert data.schema.names[:len(TABLES["trials"])] == TABLES["trials"].names
    assert set(data.schema.names) - set(TABLES["trials"].names) == {"latent_dim", "sampler", "ae_lr", "ae_channels"}
    assert data.schema.field("latent_dim").type == pa.int64()
    assert data.schema.field("ae_lr").type == pa.float64()
    assert data.schema.field("val_acc_pct").type == pa.float64()
    rows = {r["trial_id"]: r for r in data.to_pylist()}
    assert rows["t1"]["latent_dim"] == 32 and rows["t1"]["sampler"] == "ddim" and rows["t1"]["ae_lr"] is None
    assert rows["t2"]["ae_lr"] == 0.001 and rows["t2"]["ae_channels"] == [8, 16] and rows["t2"]["latent_dim"] is None
    assert rows["t3"]["latent_dim"] is None and rows["t3"]["val_acc_pct"] == 90.0
    # Selecting a knob column that only some files have.
    assert sorted(store.read("trials", columns=["latent_dim"]).column("latent_dim").to_pylist(),
                  key=lambda v: v is None) == [32, None, None]


def test_a_knob_written_as_int_and_as_float_reads_as_float(store):
    # `latent_noise: {type: choice, values: [0, 0.1]}` is a valid spec: trials record 0 and 0.1.
    store.write("trials", "c", "t1", [{"trial_id": "t1", "latent_noise": 0}])
    store.write("trials", "c", "t2", [{"trial_id": "t2", "latent_noise": 0.1}])
    store.write("trials", "c", "t3", [{"trial_id": "t3", "latent_noise": None}])
    data = store.read("trials")
    assert data.schema.field("latent_noise").type == pa.float64()
    assert {r["trial_id"]: r["latent_noise"] for r in data.to_pylist()} == {"t1": 0.0, "t2": 0.1, "t3": None}


@pytest.mark.parametrize("table", list(TABLES))
def test_reading_an_empty_table(store, table):
    data = store.read(table)
    assert data.num_rows == 0 and data.schema == TABLES[table]
    assert store.read(table, "no-such-cell").schema == TABLES[table]
    assert store.read(table, columns=["cell_id", "knob_not_in_schema"]).column_names == ["cell_id"]
    assert store.read_pandas(table).empty
    assert store.files(table) == []


def test_check_counts_rows(store):
    assert store.check() == {t: 0 for t in TABLES}
    store.write("sources", "c", "source", rows_for("sources", 1))
    store.write("checkpoints", "c", "snapshots", rows_for("checkpoints", 4))
    assert store.check() == {t: 0 for t in TABLES} | {"sources": 1, "checkpoints": 4}
    assert not Path(store.root, "trials").exists()  # checking writes nothing


@pytest.mark.parametrize("payload", [b"this is not parquet at all", b"", b"PAR1" + b"\x00" * 40 + b"PAR1"],
                         ids=["garbage", "empty", "fake-magic"])
def test_a_corrupt_file_is_named(store, payload):
    store.write("trials", "c", "good", rows_for("trials", 2))
    bad = Path(store.root, "trials", "somecell", "x.parquet")
    bad.parent.mkdir(parents=True)
    bad.write_bytes(payload)
    with pytest.raises(CorruptTable) as info:
        store.read("trials")
    assert str(bad) in str(info.value)
    with pytest.raises(CorruptTable, match="x.parquet"):
        store.check()
    with pytest.raises(CorruptTable):
        store.read_pandas("trials", "somecell")
    # The other cell and the other tables are still readable; the bad file is left alone.
    assert store.read("trials", "c").num_rows == 2
    assert store.read("generated").num_rows == 0
    assert bad.read_bytes() == payload


def test_write_and_read_bytes(store):
    path = store.write_bytes("models/cell-a/source.pt", b"\x00\x01weights")
    assert path == store.path("models/cell-a/source.pt") and Path(path).is_file()
    assert store.read_bytes("models/cell-a/source.pt") == b"\x00\x01weights"
    store.write_bytes("models/cell-a/source.pt", b"v2")
    assert store.read_bytes("models/cell-a/source.pt") == b"v2"
    with pytest.raises(FileNotFoundError):
        store.read_bytes("models/cell-b/source.pt")


def test_delete_one_writer(store):
    store.write("generated", "c", "t1", rows_for("generated", 2))
    store.write("generated", "c", "t2", rows_for("generated", 3))
    store.delete("generated", "c", "t1")
    assert store.read("generated").num_rows == 3
    store.delete("generated", "c", "t1")  # already gone: no error
    assert store.files("generated") == [store.path("generated", "c", "t2.parquet")]


def test_delete_all_removes_only_this_sweep(tmp_path):
    storage = str(tmp_path / "results")
    mine, other = Store(storage, "mine"), Store(storage, "other")
    mine.write("trials", "c", "t", rows_for("trials", 1))
    mine.write_bytes("models/c/source.pt", b"x")
    other.write("trials", "c", "t", rows_for("trials", 1))
    mine.write_marker()  # --restart deletes only a folder that carries its sweep's marker
    mine.delete_all()
    assert not (tmp_path / "results" / "mine").exists()
    assert mine.read("trials").num_rows == 0
    assert other.read("trials").num_rows == 1
    mine.delete_all()  # nothing there: no error
    assert (tmp_path / "results" / "other").is_dir()


def test_relative_storage_is_resolved_at_construction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Store("results", "sw")
    assert store.storage == str(tmp_path / "results")
    assert store.uri == store.root == str(tmp_path / "results" / "sw")
    assert store.is_local
    store.write("trials", "c", "t", rows_for("trials", 1))
    monkeypatch.chdir("/")  # a Ray worker runs elsewhere
    assert store.read("trials").num_rows == 1
    assert (tmp_path / "results" / "sw" / "trials" / "c" / "t.parquet").is_file()


def test_file_uri_is_local(tmp_path):
    store = Store(f"file://{tmp_path}/results", "sw")
    assert store.is_local
    store.write("trials", "c", "t", rows_for("trials", 1))
    assert (tmp_path / "results" / "sw" / "trials" / "c" / "t.parquet").is_file()
    assert store.read("trials").num_rows == 1


def test_a_non_local_filesystem():
    """pyarrow's in-memory `mock://` filesystem: the object-store branch (no rename), offline."""
    store = Store("mock:///bucket/prefix", "sw", "h")
    assert not store.is_local
    assert isinstance(store.fs, pafs.FileSystem) and store.fs is store.fs
    assert store.uri == "mock:///bucket/prefix/sw"
    assert store.read("trials").num_rows == 0
    store.write("trials", "c", "t1", [{"trial_id": "t1", "latent_dim": 32}])
    store.write("trials", "c", "t2", [{"trial_id": "t2", "ae_lr": 0.01}])
    store.write("trials", "c", "t1", [{"trial_id": "t1", "latent_dim": 64}])
    rows = {r["trial_id"]: r for r in store.read("trials").to_pylist()}
    assert rows["t1"]["latent_dim"] == 64 and rows["t2"]["ae_lr"] == 0.01 and len(rows) == 2
    assert store.files("trials") == ["bucket/prefix/sw/trials/c/t1.parquet", "bucket/prefix/sw/trials/c/t2.parquet"]
    store.write_bytes("models/c/source.pt", b"abc")
    assert store.read_bytes("models/c/source.pt") == b"abc"
    assert store.check()["trials"] == 2
    with store.fs.open_output_stream(store.path("trials", "c", "bad.parquet")) as sink:
        sink.write(b"garbage")
    with pytest.raises(CorruptTable, match="bad.parquet"):
        store.check()
    store.write_marker()
    store.delete_all()
    assert store.files("trials") == []
    assert store.fs.get_file_info(store.root).type == pafs.FileType.NotFound


def test_store_survives_pickling(tmp_path):
    import pickle

    store = Store(str(tmp_path), "sw", "h")
    store.write("trials", "c", "t", rows_for("trials", 1))
    copy = pickle.loads(pickle.dumps(store))
    assert copy == store and copy.root == store.root
    assert copy.read("trials").num_rows == 1
    assert os.path.isabs(copy.storage)


def test_check_schema_refuses_another_version_in_one_line(store):
    from orchestrator.store.errors import OldTables

    store.check_schema()  # no tables yet: nothing to refuse
    path = store.write("trials", "c", "t", rows_for("trials", 1))
    store.check_schema()
    assert store.schema_versions() == {SCHEMA_VERSION}
    t = pq.read_table(path)
    i = t.schema.get_field_index("schema_version")
    pq.write_table(t.set_column(i, "schema_version", pa.array([SCHEMA_VERSION - 1], pa.int32())), path)
    with pytest.raises(OldTables) as info:
        store.check_schema()
    message = str(info.value)
    assert "\n" not in message and store.uri in message and f"schema version {SCHEMA_VERSION - 1}" in message
    assert "yourself" in message  # no marker: --restart would refuse to delete the folder
    store.write_marker()
    with pytest.raises(OldTables, match="--restart"):
        store.check_schema()


def test_the_store_lists_no_link_out_of_the_sweep_and_walks_no_linked_folder(tmp_path):
    """A folder link inside a table (`trials/x -> /`) would make every reader walk its target, and a file link
    (`trials/c/evil.parquet -> /etc/hostname`) would be read as a table file: the store lists neither."""
    outside = tmp_path / "outside"
    (outside / "deep").mkdir(parents=True)
    (outside / "deep" / "t.parquet").write_bytes(b"PAR1 not ours")
    store = Store(str(tmp_path / "results"), "sw")
    store.write("trials", "c1", "w1", [{"trial_id": "t", "status": "completed", "val_acc_pct": 1.0}])
    os.symlink(outside, store.path("trials", "x"))
    os.symlink(outside / "deep" / "t.parquet", store.path("trials", "c1", "evil.parquet"))
    assert store.all_files("trials") == [store.path("trials", "c1", "w1.parquet")]
    assert len(store.read_pandas("trials")) == 1
