"""`python -m orchestrator.query RESULTS_DIR "SQL"`: DuckDB over a sweep's tables, one view per table."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from orchestrator.query import main
from orchestrator.results.sql import files, readme_questions
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store

ROOT = Path(__file__).resolve().parents[1]


# The README's three questions (its ```sql blocks are over the views), read by path and asked of the views.
# Ties between equally good val accuracies go to the lowest index / val_max_iou / trial id, so the
# answers do not depend on the order DuckDB reads the files in.
VIEW_QUERIES = [
    """
    WITH best AS (
        SELECT cell_id, first(selected_acc_pct ORDER BY val_acc_pct DESC, val_max_iou, trial_id) AS pdiff_selected,
               max(val_acc_pct) AS pdiff_val
        FROM trials WHERE status = 'completed' GROUP BY cell_id
    ), orig AS (
        SELECT cell_id, 100 * max(test_acc) AS original_best, 100 * avg(test_acc) AS original_mean
        FROM checkpoints GROUP BY cell_id
    ), base AS (
        SELECT cell_id, method, 100 * first(test_acc ORDER BY val_acc DESC, "index") AS selected
        FROM baselines GROUP BY cell_id, method
    )
    SELECT s.arch, s.dataset, avg(o.original_best) AS original_best, avg(b.pdiff_selected) AS pdiff_selected,
           avg(n.selected) AS noise, avg(a.selected) AS average, avg(g.selected) AS gaussian
    FROM sources s
    JOIN orig o USING (cell_id) JOIN best b USING (cell_id)
    JOIN base n ON n.cell_id = s.cell_id AND n.method = 'noise'
    JOIN base a ON a.cell_id = s.cell_id AND a.method = 'average'
    JOIN base g ON g.cell_id = s.cell_id AND g.method = 'gaussian'
    GROUP BY s.arch, s.dataset ORDER BY s.arch, s.dataset
    """,
    """
    SELECT cell_id, trial_id, val_acc_pct, selected_acc_pct, val_max_iou, test_max_iou,
           latent_dim, latent_noise, input_noise, ae_lr
    FROM trials WHERE status = 'completed'
    ORDER BY val_acc_pct DESC, val_max_iou ASC, trial_id LIMIT 5
    """,
    """
    SELECT 'p-diff' AS method, 100 * avg(g.test_acc) AS mean_acc_pct, avg(g.test_max_iou) AS mean_test_max_iou,
           avg(t.pairwise_iou) AS mean_pairwise_iou
    FROM generated g JOIN trials t USING (cell_id, trial_id) WHERE t.status = 'completed'
    UNION ALL
    SELECT method, 100 * avg(test_acc), avg(test_max_iou), avg(family_pairwise_iou) FROM baselines GROUP BY method
    ORDER BY method
    """,
]
# Columns whose values do not depend on how ties are broken (the rest must only have the same shape).
STABLE = [{"arch", "dataset", "original_best", "pdiff_selected"}, {"val_acc_pct", "val_max_iou"},
          {"method", "mean_acc_pct", "mean_test_max_iou", "mean_pairwise_iou"}]


def _cli(store: Store, sql: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.query", store.root, sql, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _readme_queries() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(a - b) <= 1e-6 * max(1.0, abs(a))
    return a == b


def test_readme_questions_are_the_sql_modules():
    """The README's ```sql blocks are orchestrator.results.sql's questions, over the views: its rules, written once."""
    assert _readme_queries() == readme_questions()


@pytest.mark.parametrize("i", range(3))
def test_readme_questions_through_the_views(finished_sweep, i):
    readme = _readme_queries()
    assert len(readme) == len(VIEW_QUERIES)
    by_path = duckdb.connect().execute(readme_questions(files(finished_sweep.root))[i])  # the same, read by path
    columns = [d[0] for d in by_path.description]
    expected = [dict(zip(columns, row)) for row in by_path.fetchall()]

    proc = _cli(finished_sweep, VIEW_QUERIES[i], "--format", "json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert expected, "the README's question has no answer on this sweep"
    assert len(got) == len(expected) and list(got[0]) == columns
    for g, e in zip(got, expected):
        for column in columns:
            if column in STABLE[i]:
                assert _same(g[column], e[column]), (column, g[column], e[column])
            else:
                assert (g[column] is None) == (e[column] is None), column


def test_every_table_is_a_view(finished_sweep, capsys):
    for table in TABLES:
        assert main([finished_sweep.root, f"SELECT count(*) AS n FROM {table}", "--format", "json"]) == 0
        n = json.loads(capsys.readouterr().out)[0]["n"]
        assert n == finished_sweep.read(table, columns=["cell_id"]).num_rows, table


def test_output_formats(finished_sweep, capsys):
    sql = "SELECT cell_id, trial_id, status, val_acc_pct, ae_channels FROM trials ORDER BY cell_id, trial_id"
    n = finished_sweep.read("trials", columns=["cell_id"]).num_rows

    assert main([finished_sweep.root, sql]) == 0
    table = capsys.readouterr().out
    lines = table.strip().splitlines()
    assert lines[0].split() == ["cell_id", "trial_id", "status", "val_acc_pct", "ae_channels"]
    assert len(lines) == n + 2 and lines[-1] == f"({n} rows)"

    assert main([finished_sweep.root, sql, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == n and all(json.loads(r["ae_channels"]) for r in rows)  # a list column, as JSON
    assert {float(r["val_acc_pct"]) for r in rows if r["val_acc_pct"]}

    assert main([finished_sweep.root, sql, "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in records] == [r["trial_id"] for r in rows]
    assert all(isinstance(r["ae_channels"], list) for r in records)

    # A parameter vector prints as its head and its length, not thousands of numbers.
    assert main([finished_sweep.root, "SELECT params FROM checkpoints LIMIT 1"]) == 0
    assert "items)]" in capsys.readouterr().out


@pytest.mark.parametrize("sql, message", [
    ("SELEC * FROM trials", "syntax error"),
    ("SELECT * FROM no_such_table", "no_such_table"),
    ("SELECT no_such_column FROM trials", "no_such_column"),
])
def test_bad_sql_exits_2_with_duckdbs_message(finished_sweep, sql, message):
    proc = _cli(finished_sweep, sql)
    assert proc.returncode == 2
    assert message in _one_line_error(proc.stderr) and proc.stdout == ""  # without DuckDB's "LINE 1: ..." caret


def test_not_a_sweep_exits_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing"), "SELECT 1"]) == 2
    assert "no such folder" in _one_line_error(capsys.readouterr().err)
    assert main([str(tmp_path), "SELECT 1"]) == 2
    assert "no sweep tables" in _one_line_error(capsys.readouterr().err)


# -- read-only: hostile SQL, and one damaged file -------------------------------------------------


def _copy(store: Store, where: Path, parts=TABLES) -> Store:
    """A copy of the sweep's tables (the shared sweep stays untouched whatever a test does)."""
    import shutil

    for part in parts:
        if Path(store.path(part)).is_dir():
            shutil.copytree(store.path(part), where / store.sweep / part)
    return Store(str(where), store.sweep)


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_line_error(err: str) -> str:
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.fixture
def copied(finished_sweep, tmp_path) -> Store:
    return _copy(finished_sweep, tmp_path / "results")


def test_copy_into_the_trials_table_is_refused(copied, tmp_path, capsys):
    cell = sorted(copied.read("trials", columns=["cell_id"]).column("cell_id").to_pylist())[0]
    evil = Path(copied.path("trials", cell, "evil.parquet"))
    n = copied.read("trials", columns=["cell_id"]).num_rows
    before = _listing(tmp_path)
    sql = f"COPY (SELECT * REPLACE ('fake' AS trial_id) FROM trials LIMIT 1) TO '{evil}' (FORMAT parquet)"
    assert main([copied.root, sql]) == 2
    out = capsys.readouterr()
    assert "COPY refused" in _one_line_error(out.err) and out.out == ""
    assert not evil.exists() and _listing(tmp_path) == before
    assert main([copied.root, "SELECT count(*) AS n FROM trials", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": n}]


def test_attach_creates_no_file(copied, tmp_path, capsys):
    before = _listing(tmp_path)
    for target in (Path(copied.root) / "evil.db", tmp_path / "evil.db"):
        assert main([copied.root, f"ATTACH '{target}' AS evil"]) == 2
        assert "ATTACH refused" in _one_line_error(capsys.readouterr().err)
        assert not target.exists()
    assert _listing(tmp_path) == before


def test_files_outside_the_tables_cannot_be_read(copied, capsys):
    for sql in ["SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM read_text('/etc/passwd')",
                "SELECT * FROM glob('/etc/*')"]:
        assert main([copied.root, sql]) == 2, sql
        out = capsys.readouterr()
        assert "/etc/" in _one_line_error(out.err) and "root:" not in out.out + out.err, sql
    # The tables' own files stay readable by path.
    f = copied.files("trials")[0]
    assert main([copied.root, f"SELECT count(*) AS n FROM read_parquet('{f}')", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["n"] >= 1


@pytest.mark.parametrize("sql", [
    "INSTALL httpfs", "LOAD httpfs", "EXPORT DATABASE '{root}/exported'", "IMPORT DATABASE '{root}'",
    "CREATE TABLE t AS SELECT 1", "INSERT INTO trials (trial_id) VALUES ('x')", "UPDATE trials SET val_acc_pct = 0",
    "DELETE FROM trials", "DROP VIEW trials", "ALTER VIEW trials RENAME TO t", "DETACH memory",
    "SET enable_external_access = true", "RESET lock_configuration", "PRAGMA enable_profiling",
    "CALL pragma_version()", "EXPLAIN ANALYZE COPY trials TO '{root}/e.csv'", "PIVOT trials ON status",
    "SELECT * FROM query('COPY trials TO ''{root}/q.csv''')",
])
def test_anything_but_a_select_is_refused(copied, tmp_path, capsys, sql):
    before = _listing(tmp_path)
    assert main([copied.root, sql.format(root=copied.root)]) == 2
    out = capsys.readouterr()
    if sql.startswith("SELECT"):  # refused by DuckDB itself (query() runs only a SELECT), in its own words
        assert out.err.startswith("error: ") and "Traceback" not in out.err
    else:
        assert "refused" in _one_line_error(out.err)
    assert out.out == "" and _listing(tmp_path) == before


def test_the_locked_connection_refuses_writes_even_past_the_parser(copied, tmp_path):
    """Defence in depth: the connection itself, once locked, writes nowhere and reads only the tables."""
    from orchestrator.results.query import _read_only
    from orchestrator.results.views import open_views

    con, corrupt = open_views(copied)
    assert not corrupt
    _read_only(con, copied, str(tmp_path / "spill"))
    n = con.execute("SELECT count(*) FROM trials").fetchone()[0]
    before = _listing(Path(copied.root))
    for sql in [f"COPY trials TO '{copied.root}/trials/evil.parquet'", f"ATTACH '{copied.root}/evil.db'",
                f"EXPORT DATABASE '{copied.root}/exported'", "SELECT * FROM read_csv('/etc/passwd')",
                "SET enable_external_access = true", "SET allowed_directories = ['/']", "LOAD httpfs"]:
        with pytest.raises(duckdb.Error):
            con.execute(sql).fetchall()
    assert con.execute("SELECT count(*) FROM trials").fetchone()[0] == n
    assert _listing(Path(copied.root)) == before


@pytest.mark.parametrize("sql", ["", "   ", "-- only a comment", ";", " ; ; "])
def test_empty_sql_is_one_line_error(copied, capsys, sql):
    assert main([copied.root, sql]) == 2
    out = capsys.readouterr()
    assert "empty SQL" in _one_line_error(out.err) and out.out == ""


@pytest.mark.parametrize("sql", ["SELECT 1; SELECT 2", "SELECT count(*) FROM trials; DROP VIEW trials"])
def test_two_statements_are_refused(copied, capsys, sql):
    assert main([copied.root, sql]) == 2
    out = capsys.readouterr()
    assert "exactly one statement" in _one_line_error(out.err) and out.out == ""


@pytest.mark.parametrize("sql", ["SELECT count(*) AS n FROM trials", "FROM trials SELECT count(*) AS n",
                                 "WITH t AS (SELECT * FROM trials) SELECT count(*) AS n FROM t"])
def test_a_select_still_works(copied, capsys, sql):
    assert main([copied.root, sql, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"n": copied.read("trials", columns=["cell_id"]).num_rows}]
    assert main([copied.root, "DESCRIBE trials"]) == 0
    assert "status" in capsys.readouterr().out


def test_a_truncated_file_fails_only_the_queries_that_read_its_table(copied, capsys):
    bad = Path(copied.files("generated")[0])
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    for table in ("sources", "trials", "checkpoints", "baselines"):
        assert main([copied.root, f"SELECT count(*) AS n FROM {table}", "--format", "json"]) == 0, table
        assert json.loads(capsys.readouterr().out)[0]["n"] > 0
    for sql in ["SELECT count(*) FROM generated", "SELECT * FROM trials JOIN generated USING (cell_id, trial_id)",
                "SELECT (SELECT max(test_acc) FROM generated)", "SELECT * FROM query_table('generated')"]:
        assert main([copied.root, sql]) == 2, sql
        out = capsys.readouterr()
        assert str(bad) in _one_line_error(out.err) and out.out == "", sql
    proc = _cli(copied, "SELECT count(*) FROM generated")  # the command line too: one line, no traceback
    assert proc.returncode == 2 and str(bad) in _one_line_error(proc.stderr)
