"""`orchestrator.query` on hostile or unlucky inputs: reads stay inside the sweep, paths are data (no glob, no
link out), every bad argument is one line and exit 2, and nothing in the sweep is ever written."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from tiny_sweep import CELLS, TRIALS, tree_state

from orchestrator.query import main
from orchestrator.results import sql
from orchestrator.results.query import unique_names
from orchestrator.results.summary import summary
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store

SECRET = "TOP-SECRET-OUTSIDE-THE-SWEEP"


def copy_sweep(store: Store, storage: Path, name: str) -> Store:
    """The sweep's tables and marker under `storage/name` (the shared sweep stays untouched)."""
    for part in TABLES:
        if Path(store.path(part)).is_dir():
            shutil.copytree(store.path(part), storage / name / part)
    shutil.copy(store.path("_sweep.json"), storage / name / "_sweep.json")
    return Store(str(storage), name)


def run(*argv: str) -> tuple[int, str, str]:
    """main(argv) in process: (exit status, stdout, stderr); argparse's --help exits 0."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


def refused(rc: int, out: str, err: str) -> str:
    assert rc == 2 and out == "", (rc, out, err)
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err and "\x1b" not in err
    return err




def count(store: Store, table: str = "trials") -> int:
    rc, out, err = run(store.root, f"SELECT count(*) AS n FROM {table}", "--format", "json")
    assert rc == 0, err
    return json.loads(out)[0]["n"]


# -- probe 1: a link planted inside the sweep is not followed out of it ----------------------------------


@pytest.fixture
def planted(finished_sweep, tmp_path) -> Store:
    """A copy of the sweep with links planted in it: out of the sweep (to a text file, to a Parquet file of
    the sweep's own rows), back into it (to one of its own files), and a FIFO."""
    store = copy_sweep(finished_sweep, tmp_path / "results", "tiny")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET + "\n")
    trials = store.files("trials")
    shutil.copy(trials[0], outside / "rows.parquet")
    cell = Path(trials[0]).parent
    os.symlink(outside / "secret.txt", store.path("runs", "evil.parquet"))
    os.symlink(outside / "rows.parquet", cell / "evil_out.parquet")
    os.symlink(trials[0], cell / "evil_in.parquet")
    os.mkfifo(store.path("runs", "fifo.parquet"))
    return store


def test_a_link_out_of_the_sweep_is_not_read(planted, finished_sweep):
    evil = planted.path("runs", "evil.parquet")
    for query in [f"SELECT content FROM read_text('{evil}')", f"SELECT * FROM read_blob('{evil}')",
                  f"SELECT * FROM read_csv('{evil}')"]:
        rc, out, err = run(planted.root, query)
        assert SECRET not in out + refused(rc, out, err), query
    # The views read neither the link out nor a second path to one of the sweep's own files.
    assert count(planted) == count(finished_sweep)
    assert count(planted, "runs") == count(finished_sweep, "runs")
    assert summary(planted)["trials"].sum() == CELLS * TRIALS


def test_inside_keeps_only_regular_files_inside_the_real_folder(planted, tmp_path):
    listed = [planted.path("runs", n) for n in ("evil.parquet", "fifo.parquet")] + planted.all_files("trials")
    kept = sql.inside(planted.root, listed)
    assert planted.path("runs", "evil.parquet") not in kept and planted.path("runs", "fifo.parquet") not in kept
    assert not [p for p in kept if "evil_out" in p] and len(set(kept.values())) == len(kept)
    assert all(r.startswith(os.path.realpath(planted.root) + "/") for r in kept.values())
    # The sweep folder behind a link of its own is still the sweep: its files, by their real paths.
    os.symlink(planted.root, tmp_path / "alias")
    via = sql.inside(str(tmp_path / "alias"), [str(tmp_path / "alias" / Path(p).relative_to(planted.root))
                                               for p in planted.files("sources")])
    assert sorted(via.values()) == sorted(os.path.realpath(p) for p in planted.files("sources"))


# -- probe 2: a glob character in the sweep's path stands for itself -----------------------------------------


def test_a_glob_character_in_the_sweep_path_is_no_glob(finished_sweep, tmp_path):
    results = tmp_path / "results"
    tiny, tin = copy_sweep(finished_sweep, results, "tiny"), copy_sweep(finished_sweep, results, "tin?")
    n = count(tiny)
    assert n == CELLS * TRIALS and count(tin) == n
    assert len(summary(tin)) == CELLS and summary(tin)["trials"].sum() == n  # the sweep's end-of-run summary
    # The README's by-path form too.
    assert duckdb.connect().execute(f"SELECT count(*) FROM {sql.files(tin.root)('trials')}").fetchone()[0] == n


@pytest.mark.parametrize("name", ["a*b", "a?b", "l[ab]", "l[!x]", "br{a,b}", "back\\slash", "quo'te", "~home"])
def test_path_list_matches_each_path_only(tmp_path, name):
    import pyarrow as pa
    import pyarrow.parquet as pq

    for folder in (name, "axb", "la", "lb", "brab", "bra"):  # what the name would match as a pattern
        (tmp_path / folder).mkdir(exist_ok=True)
        pq.write_table(pa.table({"folder": [folder]}), tmp_path / folder / "f.parquet")
    listing = sql.path_list([str(tmp_path / name / "f.parquet")])
    got = duckdb.connect().execute(f"SELECT folder FROM read_parquet({listing})")
    assert got.fetchall() == [(name,)]


# -- probe 8 and 9: deep nesting, degenerate folders --------------------------------------------------------


@pytest.mark.parametrize("depth", [600, 900])
def test_deeply_nested_subqueries_are_one_line(finished_sweep, depth):
    query = "SELECT count(*) FROM " + "(SELECT * FROM " * depth + "trials" + ")" * depth
    assert "nests too deeply" in refused(*run(finished_sweep.root, query))


@pytest.mark.parametrize("arg, message", [
    ("/", "name a sweep's folder itself"), ("//", "name a sweep's folder itself"), ("", "name a sweep"),
    (".", "name a sweep"), ("./", "name a sweep"), ("..", "name a sweep"), ("trials/..", "name a sweep"),
    ("tin\0y", "NUL"), ("missing", "no such folder"), ("_sweep.json", "not a folder"),
    ("to_root", "root folder"), ("/proc/self/root", "root folder"),
])
def test_degenerate_folders_are_refused(finished_sweep, tmp_path, monkeypatch, arg, message):
    store = copy_sweep(finished_sweep, tmp_path, "tiny")
    os.symlink("/", Path(store.root) / "to_root")
    monkeypatch.chdir(store.root)  # '/' and '.' used to query the current folder: the sweep itself here
    before = tree_state(tmp_path)
    assert message in refused(*run(arg, "SELECT count(*) FROM trials"))
    assert tree_state(tmp_path) == before


# -- issue 20.3: two output columns of one name ---------------------------------------------------------------


def test_unique_names_as_duckdb_makes_them():
    names = ["a", "a", "a_1", "a", "A", "b"]
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT " + ", ".join(f'{i} AS "{n}"' for i, n in enumerate(names)))
    assert unique_names(names) == [r[0] for r in con.execute("DESCRIBE t").fetchall()]


def test_duplicate_column_names_in_every_format(finished_sweep):
    join = "SELECT * FROM trials t JOIN generated g USING (trial_id)"
    pair = ("SELECT t.test_max_iou, g.test_max_iou FROM trials t JOIN generated g USING (cell_id, trial_id) "
            "ORDER BY g.test_max_iou LIMIT 3")
    for fmt in ("table", "csv", "json"):
        rc, out, err = run(finished_sweep.root, join, "--format", fmt)
        assert rc == 0 and err == "", err
    rc, out, err = run(finished_sweep.root, join, "--format", "json")
    columns = list(json.loads(out)[0])
    assert "cell_id_1" in columns and "test_max_iou_1" in columns and len(columns) == len(set(columns))
    rc, csv_out, _ = run(finished_sweep.root, join, "--format", "csv")
    assert next(csv.reader(io.StringIO(csv_out))) == columns

    _, out, _ = run(finished_sweep.root, pair, "--format", "json")
    rows = json.loads(out)
    assert len(rows) == 3 and all(set(r) == {"test_max_iou", "test_max_iou_1"} for r in rows)
    assert all(isinstance(r["test_max_iou"], float) and isinstance(r["test_max_iou_1"], float)
               for r in rows)  # both kept
    _, out, _ = run(finished_sweep.root, pair, "--format", "csv")
    assert out.splitlines()[0] == "test_max_iou,test_max_iou_1" and len(out.splitlines()) == 4
    _, out, _ = run(finished_sweep.root, pair)
    assert out.splitlines()[0].split() == ["test_max_iou", "test_max_iou_1"] and out.splitlines()[-1] == "(3 rows)"


# -- the command's arguments, fuzzed -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_sweep(finished_sweep, tmp_path_factory) -> Store:
    """A copy of the sweep with a link out, a link in and a FIFO planted, and links to it, to '/' beside."""
    base = tmp_path_factory.mktemp("fuzz")
    store = copy_sweep(finished_sweep, base / "results", "tiny")
    (base / "secret.txt").write_text(SECRET + "\n")
    os.symlink(base / "secret.txt", store.path("runs", "evil.parquet"))
    os.symlink(store.files("trials")[0], store.path("runs", "in.parquet"))
    os.mkfifo(store.path("runs", "fifo.parquet"))
    os.symlink(store.root, base / "alias")
    os.symlink("/", base / "root")
    return store


def _paths(store: Store) -> st.SearchStrategy[str]:
    root, base = store.root, str(Path(store.root).parents[1])
    known = [root, root + "/", root + "//", f"{base}/alias", f"{base}/alias/", f"{base}/root", f"{base}/secret.txt",
             store.path("trials"), store.path("runs", "evil.parquet"), store.path("runs", "fifo.parquet"),
             store.files("trials")[0], store.path("_sweep.json"), f"{root}/..", f"{root}/.", f"{base}/results/tin?",
             f"{base}/results/t*", "/", "//", "", ".", "..", "~", "~0", "~nobody/x", "/proc", "/proc/self",
             "/proc/self/root", "/proc/self/fd/0", "/proc/self/cwd", "/dev/null", "/nonexistent/tiny", "-", "--",
             "-h x", "a\0b",
             "\n", "tiny\nerror: forged", "\x1b[31mred", "\udcff", "é/ü", "x" * 5000, "/".join(["a"] * 3000)]
    weird = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from("/.*?[]\\'\"\0\n~-"),
                    max_size=30)
    sweep = [root, root + "/", f"{base}/alias", f"/proc/self/root{root}"]  # the sweep, by four names
    return st.one_of(st.sampled_from(sweep), st.sampled_from(known), weird.filter(lambda t: "://" not in t),
                     st.tuples(st.sampled_from([root, f"{base}/alias", "/proc/self"]), weird).map(
                         lambda p: p[0] + "/" + p[1]).filter(lambda t: "://" not in t))


def _sqls(store: Store) -> st.SearchStrategy[str]:
    evil = store.path("runs", "evil.parquet")
    known = ["SELECT count(*) FROM trials", "SELECT * FROM trials t JOIN generated g USING (trial_id)",
             "SELECT cell_id, params FROM checkpoints LIMIT 2", "DESCRIBE trials", "SHOW TABLES", "SUMMARIZE runs",
             f"SELECT content FROM read_text('{evil}')", f"SELECT * FROM read_parquet('{evil}')",
             f"SELECT * FROM read_parquet('{store.root}/runs/*.parquet')", "SELECT * FROM glob('/*')",
             f"COPY trials TO '{store.root}/x.parquet'", f"ATTACH '{store.root}/x.db'", "SELECT 1 AS a, 2 AS a, 3 AS A",
             "SELECT 1e400, 'nan'::DOUBLE, -0.0", "SELECT 170141183460469231731687303715884105727::HUGEINT",
             "SELECT 2::UHUGEINT ** 127", "SELECT 1::DECIMAL(38,0) * 10 ** 37", "SELECT 10 ** 400",
             "SELECT 'a\nb' AS \"x\ny\"", "SELECT [1, NULL], {'a': 1}, MAP {1: 2}, INTERVAL 1 DAY, uuid()",
             "SELECT '\\x00'::BLOB, ''::VARCHAR, NULL", "SELECT * FROM trials WHERE false", "SELECT", ";", "",
             "SELECT current_setting('allowed_paths')", "SELECT * FROM duckdb_settings() LIMIT 1", "-- x",
             "SELECT * FROM query_table('generated') LIMIT 1", "SELECT 1; SELECT 2", "SET threads = 1",
             "SELECT '\udcff'", "SELECT '\x1b[31m' AS \"\x1b[0m\"", "SELEC \x1b[31m"]
    depth = st.integers(0, 1200)
    nested = st.one_of(
        depth.map(lambda n: "SELECT count(*) FROM " + "(SELECT * FROM " * n + "trials" + ")" * n),
        depth.map(lambda n: "SELECT " + "(" * n + "1" + ")" * n),
        depth.map(lambda n: "SELECT " + "(SELECT " * n + "1" + ")" * n))
    numbers = st.one_of(st.integers(-10 ** 60, 10 ** 60).map(str), st.floats().map(repr)).map(
        lambda x: f"SELECT {x} AS n, count(*) FROM trials WHERE val_acc_pct < {x}")
    return st.one_of(st.sampled_from(known), st.text(max_size=60), nested, numbers)


@given(data=st.data())
@settings(max_examples=300, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
def test_fuzzed_arguments_exit_0_or_one_line_2(fuzz_sweep, data):
    base = Path(fuzz_sweep.root).parents[1]
    before = tree_state(base)
    argv = [data.draw(_paths(fuzz_sweep), "results_dir"), data.draw(_sqls(fuzz_sweep), "sql")]
    fmt = data.draw(st.one_of(st.none(), st.sampled_from(["table", "csv", "json"]), st.text(max_size=8)), "format")
    if fmt is not None:
        argv += ["--format", fmt]
    rc, out, err = run(*argv)
    if rc == 0:
        assert err == "", err
    else:
        refused(rc, out, err)
    assert SECRET not in out + err
    assert tree_state(base) == before  # nothing written in (or beside) the sweep
