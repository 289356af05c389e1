"""Every command's arguments, fuzzed (issue 17, part 5), and colour-free tracebacks (probe 10).

report, generate, explain and sweep's own arguments (query has its fuzz in test_query_inputs.py) get paths to
files, folders, /proc, links and existing outputs, huge, negative and non-numbers, unavailable devices and
unknown flags. Each run, `main(argv)` in process, must exit 0 or 2; on 2 print exactly one line on stderr and
create or change nothing at all; and never change anything inside the sweep's folder (a copy of the shared
tiny sweep). The sweep is fuzzed only where it stops before Ray: `--dry-run`, or a storage it refuses.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings, strategies as st
from tiny_sweep import TINY, tree_state

from orchestrator import explain, generate, report as report_cli, sweep as sweep_cli
from orchestrator.results import report
from orchestrator.results.report import REPORT_MARKER

ROOT = Path(__file__).resolve().parents[1]
FUZZ = dict(max_examples=300, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


# -- probe 10: no colour codes off a terminal, tracebacks included -----------------------------------------

# How Ray words a failed task (RayTaskError): its `ray::` name in colour, in the message of the traceback.
COLOURED = "\x1b[36mray::_search_cell()\x1b[39m (pid=1, ip=10.0.0.1) \x1b[1m\x1b[31mboom\x1b[0m"
COMMANDS = ["sweep", "report", "query", "generate", "explain"]
# Each command's `__main__` block (runpy), with an error no command expects raised inside `main`, its stdout
# and stderr files (not a terminal); an error that leaves `__main__` is printed as Python prints it.
DRIVER = """
import argparse, runpy, sys
message, folder = sys.argv[1], sys.argv[2]
def fail(self, *args, **kwargs):
    raise RuntimeError(message)
argparse.ArgumentParser.parse_args = fail
for command in sys.argv[3:]:
    with open(f"{folder}/{command}.out", "w") as sys.stdout, open(f"{folder}/{command}.err", "w") as sys.stderr:
        try:
            runpy.run_module(f"orchestrator.{command}", run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    print(command, code)
"""


def test_a_traceback_off_a_terminal_has_no_colour_codes(tmp_path):
    env = dict(os.environ, TERM="xterm-256color", RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, COLOURED, str(tmp_path), *COMMANDS], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.stdout.split() == [w for c in COMMANDS for w in (c, "1")], proc.stdout + proc.stderr[-2000:]
    for command in COMMANDS:
        out, err = (tmp_path / f"{command}.out").read_text(), (tmp_path / f"{command}.err").read_text()
        assert "Traceback" in err and "ray::_search_cell() (pid=1" in err, (command, err[-2000:])
        assert "\x1b" not in out + err, (command, err[-500:])


# -- the folders every fuzzed command sees -----------------------------------------------------------------


@pytest.fixture(scope="module")
def area(finished_sweep, tmp_path_factory) -> Path:
    """results/tiny (a copy of the shared sweep with its models), outside/ (the user's things: a file, a site
    with its own index.html, an empty folder, an earlier report of tiny, links), specs/ and new/ (the working
    folder, where new outputs go; emptied after each example)."""
    area = tmp_path_factory.mktemp("cli_fuzz")
    shutil.copytree(finished_sweep.root, area / "results" / "tiny",
                    ignore=shutil.ignore_patterns("_ray", "report", "_lease*", "generated_more"))
    outside = area / "template"
    (outside / "site").mkdir(parents=True)
    (outside / "site" / "index.html").write_text("<p>mine</p>")
    (outside / "empty").mkdir()
    (outside / "marked").mkdir()
    (outside / "marked" / REPORT_MARKER).write_text(json.dumps({"tool": "pdiff-sweep", "report": "tiny"}))
    (outside / "afile").write_text("mine")
    (outside / "taken.parquet").write_text("mine")
    (outside / "alias").symlink_to(area / "results" / "tiny", target_is_directory=True)
    (outside / "filelink").symlink_to(outside / "afile")
    (outside / "dangling").symlink_to(area / "nowhere")
    shutil.copytree(outside, area / "outside", symlinks=True)
    specs = area / "specs"
    specs.mkdir()
    (specs / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    (specs / "other.yaml").write_text(yaml.safe_dump(TINY | {"name": "other", "storage": str(area / "new")}))
    (specs / "garbage.yaml").write_bytes(b"\x00\xff{[: garbage")
    (specs / "folder.yaml").mkdir()
    (area / "new").mkdir()
    return area




def _weird(area: Path) -> st.SearchStrategy[str]:
    """Odd relative names (resolved in new/), never a URI (no network), a home folder or a climb out."""
    text = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from("/.*?[]\\'\"\0\n~-:"), max_size=20)
    return text.filter(lambda t: "://" not in t and ".." not in t and not t.startswith(("/", "~")))


def _inputs(area: Path) -> st.SearchStrategy[str]:
    """What a command reads: the sweep by several names, other folders and files, /proc, links, odd names."""
    sweep, out = area / "results" / "tiny", area / "outside"
    known = [sweep, f"{sweep}/", sweep / "trials", sweep / "_sweep.json", sweep / "models", sweep / "report",
             area / "results", out / "alias", f"/proc/self/root{sweep}", out / "afile", out / "afile" / "x",
             out / "site", out / "empty", out / "marked", out / "filelink", out / "dangling", "/proc", "/proc/x",
             "/proc/self/status", "/dev/null", "/", ".", "..", "", "~", "nosuch://a/b", "x\ny", "a\x00b",
             "\x1b[31mred", "é/ü", "x" * 300, "/".join(["a"] * 3000), "-x", "--"]
    return st.one_of(st.sampled_from([str(p) for p in known]), _weird(area),
                     st.tuples(st.sampled_from([str(sweep), str(out)]), _weird(area)).map("/".join))


def _outputs(area: Path, names: list[str]) -> st.SearchStrategy[str]:
    """Where a command might write: new names (in new/), the user's things, the sweep, /proc, odd names."""
    sweep, out = area / "results" / "tiny", area / "outside"
    known = [sweep, sweep / "trials", sweep / "report", sweep / "new", out / "alias" / "x", out / "site",
             out / "empty", out / "marked", out / "afile", out / "afile" / "x", out / "taken.parquet",
             out / "filelink", out / "dangling", "/proc/x", "/proc", "/dev/null", "/", ".", "", "x\ny", "a\x00b",
             "x" * 300] + [f"{d}/{n}" for d in (sweep, sweep / "trials", out, "new", "newdir/sub", "/proc")
                           for n in names]
    return st.one_of(st.sampled_from([str(p) for p in known]), st.sampled_from(names), _weird(area))


NUMBERS = ["0", "1", "-1", "3", "8", "10000", "10001", "1000000000", str(10**23), str(2**63 - 1), str(2**63),
           "-" + str(2**63), "nan", "inf", "-inf", "1e400", "1.5", "", " 3", "0x10", "٣"]
numbers = st.one_of(st.sampled_from(NUMBERS), st.integers(-(10**30), 10**30).map(str))
junk = st.lists(st.sampled_from(["--bogus", "-x", "--", "-", "--out", "--out=", "-n", "--seed", "--help", "extra",
                                 "--quiet", "--dry-run", "--verbose"]), max_size=2)


def call(main: Callable, argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """main(argv) in process, in `cwd`: (exit status, stdout, stderr); argparse exits through SystemExit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def check(area: Path, main: Callable, argv: list[str], own: str | None = None) -> int:
    """Run one example and check the rules; then put the outside folders back as they were. `own`: the
    command's own folder in the sweep (the report's `report/`), which only a run that exits 0 may write."""
    sweep_before, before = tree_state(area / "results"), tree_state(area)
    code, out, err = call(main, argv, area / "new")
    event(f"exit {code}")
    try:
        assert code in (0, 2), (argv, code, out, err)
        assert "Traceback" not in err and "\x1b" not in out + err, (argv, err)
        after = tree_state(area / "results")
        if code == 0 and own:  # its own folder, and the time its parent folder changed
            after = {k: v for k, v in after.items() if k != own and not k.startswith(own + os.sep)}
            after[os.path.dirname(own)] = sweep_before[os.path.dirname(own)]
        assert after == sweep_before, argv  # nothing inside the sweep, ever
        if code == 2:
            assert err.startswith("error: ") and err.count("\n") == 1, (argv, err)
            assert tree_state(area) == before, argv  # nothing created or changed anywhere before a refusal
        else:
            assert err == "", (argv, err)
            assert (area / "outside" / "site" / "index.html").read_text() == "<p>mine</p>", argv
    finally:
        if own:
            shutil.rmtree(area / "results" / own, ignore_errors=True)
        shutil.rmtree(area / "outside")
        shutil.copytree(area / "template", area / "outside", symlinks=True)
        shutil.rmtree(area / "new")
        (area / "new").mkdir()
    return code


def _write_files(store, con, out: Path, *args, **kwargs) -> None:
    (out / "index.html").write_text(f"report of {store.sweep}")


@settings(**FUZZ)
@given(data=st.data())
def test_report_arguments(area, data):
    argv = [data.draw(st.one_of(_inputs(area), st.just(str(area / "results" / "tiny"))), "results_dir")]
    argv += ["--out", data.draw(_outputs(area, ["report", "r/s/t", "index.html"]), "out"), "--quiet"]
    argv += data.draw(junk, "junk")
    # The report's contents (seconds: DuckDB's summary and the figures) are test_report.py's; here, where it goes.
    with mock.patch.object(report, "_summarise", lambda *a: (None, None, [], [], {})), \
            mock.patch.object(report, "_write_files", _write_files):
        check(area, report_cli.main, argv, own=os.path.join("tiny", "report"))


@pytest.fixture(scope="module")
def trial(area) -> str:
    from orchestrator.store.tables import Store

    trials = Store(str(area / "results"), "tiny").read_pandas("trials", columns=["trial_id", "status"])
    return trials[trials.status == "completed"].trial_id.iloc[0]


@settings(**FUZZ)
@given(data=st.data())
def test_generate_arguments(area, trial, data):
    sweep = str(area / "results" / "tiny")
    argv = [data.draw(st.one_of(st.just(sweep), _inputs(area)), "results_dir"),
            data.draw(st.one_of(st.just(trial), st.sampled_from(["nope", "", "../t", "t'; --", "\n", "-n"])), "trial")]
    options = {"-n": numbers, "--seed": numbers,
               "--device": st.sampled_from(["cpu", "cuda", "cuda:0", "cuda:7", "cuda:-1", "mps", "meta", "xla", "foo",
                                            "", "cpu:0", "CPU"])}
    for flag, values in options.items():
        if data.draw(st.booleans(), flag):
            argv += [flag, data.draw(values, flag + " value")]
    # Always an --out: the default file goes under the current folder's generated/ (tested in test_generate).
    argv += ["--out", data.draw(_outputs(area, ["x.parquet", "x.pt", "x.txt", "x.parquet/"]), "out")]
    argv += data.draw(st.lists(st.sampled_from(["--score"]), max_size=1)) + data.draw(junk, "junk")
    with (mock.patch.object(generate, "_evaluate", lambda *a: (None, None)),  # scoring reads the dataset: seconds
          mock.patch.object(generate, "_score", lambda *a: "scored")):
        check(area, generate.main, argv)


@settings(**FUZZ)
@given(argv=st.lists(st.one_of(st.sampled_from(["--write", "--bogus", "-h", "--help", "-w", "--wr", "--write=1", "x",
                                                 "--", "-", "\n", "\x00"]), st.text(max_size=8)), max_size=3))
def test_explain_arguments(area, argv):
    with mock.patch.object(explain, "REFERENCE_PATH", area / "new" / "reference.md"):
        check(area, explain.main, argv)


@settings(**FUZZ)
@given(data=st.data())
def test_sweep_arguments(area, data):
    specs = area / "specs"
    spec = data.draw(st.one_of(st.sampled_from([str(specs / n) for n in sorted(os.listdir(specs))]), _inputs(area)),
                     "spec")
    refused = [str(area / "outside" / "afile"), str(area / "outside" / "afile" / "x"), "/proc/x", "/dev/null"]
    dry = data.draw(st.booleans(), "dry run")
    # Without --dry-run, only a storage the sweep refuses before Ray (connect_ray raises if reached).
    storage = data.draw(st.one_of(st.none(), st.just(str(area / "results")), _outputs(area, ["s", "t/u"]))
                        if dry else st.sampled_from(refused), "storage")
    argv = [spec] + (["--dry-run"] if dry else []) + ([] if storage is None else ["--storage", storage])
    argv += data.draw(st.lists(st.sampled_from(["--restart", "--verbose", "--shared-storage", "--explain"]),
                               max_size=2, unique=True), "flags")
    argv += data.draw(st.lists(st.sampled_from(["--bogus", "--address", "--storage", "extra", "-h"]), max_size=1))
    with mock.patch.object(sweep_cli, "connect_ray", side_effect=AssertionError("the fuzz reached Ray")):
        check(area, sweep_cli.main, argv)
