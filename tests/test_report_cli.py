"""`python -m orchestrator.report` on bad input: where the report goes (`--out`) and mistyped table columns.

Each refusal is exit 2 and one line on stderr, before any folder is made; a report replaces only a folder that is
new, empty, or an earlier report of the same sweep (its `_report.json`), and appears only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny_sweep import tree_state

from orchestrator.report import main
from orchestrator.results import report
from orchestrator.results.report import REPORT_MARKER, write_report
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store


@pytest.fixture(scope="module")
def tables(finished_sweep, tmp_path_factory) -> Store:
    """The finished sweep's tables and marker (no models, no report) in a folder of this module's own."""
    dest = tmp_path_factory.mktemp("report_cli") / "tiny"
    for part in TABLES:
        if os.path.isdir(finished_sweep.path(part)):
            shutil.copytree(finished_sweep.path(part), dest / part)
    shutil.copy(finished_sweep.path("_sweep.json"), dest / "_sweep.json")
    return Store(str(dest.parent), "tiny")




def refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- probe 12 (--out) and 13: where a report may go ------------------------------------------------------


def test_an_out_that_is_no_report_folder_is_refused_in_one_line(tables, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    user = tmp_path / "site"  # the user's own index.html: never overwritten
    user.mkdir()
    (user / "index.html").write_text("<p>mine</p>")
    other = tmp_path / "other-report"  # a report of another sweep
    other.mkdir()
    (other / REPORT_MARKER).write_text(json.dumps({"tool": "pdiff-sweep", "report": "not-tiny"}))
    (tmp_path / "link").symlink_to(tmp_path / "empty", target_is_directory=True)
    (tmp_path / "empty").mkdir()
    cases = {
        "/proc/x": "cannot write there",
        str(afile): "not a folder",
        str(afile / "sub"): "is not a folder",
        str(user): "not a report of sweep tiny",
        str(other): "not a report of sweep tiny",
        tables.root: "inside the sweep's folder",
        tables.path("trials", "x"): "inside the sweep's folder",
        str(tmp_path / "link"): "a link",
        "x\0y": "--out",
    }
    before, sweep = tree_state(tmp_path), tree_state(Path(tables.root).parent)
    for out, words in cases.items():
        err = refused(capsys, [tables.root, "--out", out, "--quiet"])
        assert words in err, (out, err)
        assert tree_state(tmp_path) == before and tree_state(Path(tables.root).parent) == sweep, out
    assert (user / "index.html").read_text() == "<p>mine</p>"


def _stub(stamp: str, fail: bool = False):
    """report._write_files, writing one page (the figures take seconds, and the folder handling is what is
    tested here); `fail`: then raising, as a full disk would."""
    def write(store, con, out: Path, *args, **kwargs):
        (out / "index.html").write_text(stamp)
        (out / f"{stamp}.txt").write_text(stamp)
        if fail:
            raise OSError(28, "No space left on device")
    return write


def test_a_report_is_marked_and_replaces_only_its_own_earlier_report(tables, tmp_path, monkeypatch):
    target = tmp_path / "new" / "sub" / "report"  # missing parents are made
    monkeypatch.setattr(report, "_write_files", _stub("first"))
    assert write_report(tables, target) == target / "index.html"
    assert json.loads((target / REPORT_MARKER).read_text())["report"] == "tiny"
    assert sorted(p.name for p in target.iterdir()) == [REPORT_MARKER, "first.txt", "index.html"]

    monkeypatch.setattr(report, "_write_files", _stub("second"))  # its own earlier report: replaced whole
    write_report(tables, target)
    assert sorted(p.name for p in target.iterdir()) == [REPORT_MARKER, "index.html", "second.txt"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["report"]  # no scratch folder left

    empty = tmp_path / "empty"
    empty.mkdir()
    write_report(tables, empty)
    assert (empty / "index.html").read_text() == "second"


def test_no_half_written_report_is_left_in_place(tables, tmp_path, monkeypatch):
    target = tmp_path / "report"
    monkeypatch.setattr(report, "_write_files", _stub("good"))
    write_report(tables, target)
    before = tree_state(tmp_path)
    monkeypatch.setattr(report, "_write_files", _stub("half", fail=True))
    with pytest.raises(OSError):
        write_report(tables, target)
    assert tree_state(tmp_path) == before  # the earlier report untouched, no scratch folder
    with pytest.raises(OSError):
        write_report(tables, tmp_path / "a" / "b" / "report")
    assert tree_state(tmp_path) == before  # nor the parent folders made for it


# -- probe 12: a column stored with another type ---------------------------------------------------------


@pytest.mark.parametrize("table, column", [("trials", "val_acc_pct"), ("sources", "seed")])
def test_a_mistyped_column_is_one_line_naming_table_and_column(tables, tmp_path, capsys, table, column):
    copy = Path(shutil.copytree(tables.root, tmp_path / "results" / "tiny"))
    store = Store(str(copy.parent), "tiny")
    path = store.files(table)[0]
    data = pq.read_table(path)
    data = data.set_column(data.schema.get_field_index(column), column, data.column(column).cast(pa.string()))
    pq.write_table(data, path)
    before = tree_state(tmp_path)
    err = refused(capsys, [store.root, "--out", str(tmp_path / "out")])
    assert f"{table}.{column} is string" in err and path in err, err
    assert tree_state(tmp_path) == before
