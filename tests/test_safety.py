"""Nothing outside the sweep touched, bad input refused before any work (issue 10, parts 1, 5, 6).

`python -m orchestrator.sweep` is called in-process (`main(argv)`) wherever it stops
before Ray: the name check, the folder's ownership, the storage probe and the lease
all come before `connect_ray`. Every refusal must exit 2 and leave every file and
folder as it was. Only the marked-slow Ctrl-C test starts Ray.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from orchestrator import sweep as sweep_cli
from orchestrator.spec import MAXIMA, load_spec
from orchestrator.store.errors import NotOurFolder
from orchestrator.store.lease import Lease, LeaseHeld
from orchestrator.store.ownership import LEASE, MARKER
from orchestrator.store.tables import Store

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "sweeps" / "smoke.yaml"


def snapshot(folder: Path) -> dict[str, object]:
    """Every file (with its bytes), folder and link below `folder`."""
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = p.read_bytes()
    return out


def spec_file(folder: Path, name: str = "smoke", **changes) -> Path:
    raw = yaml.safe_load(SMOKE.read_text())
    raw["name"] = name
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value
    path = folder / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = sweep_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def a_sweep(storage: Path, name: str, marked: bool = True) -> Store:
    """A stored sweep with a table file, a model and (optionally) its marker."""
    store = Store(str(storage), name, "h")
    store.write_bytes("trials/cell/t1.parquet", b"rows of " + name.encode())
    store.write_bytes("models/cell.pt", b"model")
    if marked:
        store.write_marker()
    return store


@pytest.fixture
def crowded(tmp_path) -> Path:
    """tmp/parent/{beside.txt, results/{other sweep, notes.txt}}: everything that must survive."""
    parent = tmp_path / "parent"
    results = parent / "results"
    results.mkdir(parents=True)
    (parent / "beside.txt").write_text("a file beside the storage folder")
    (results / "notes.txt").write_text("a file in the storage folder")
    a_sweep(results, "other")
    return tmp_path


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """These tests must stop before Ray: reaching connect_ray is a failure."""
    def refuse(*_a, **_k):
        raise AssertionError("reached connect_ray: the check did not happen before Ray")
    monkeypatch.setattr(sweep_cli, "connect_ray", refuse)


# -- 1. deletion never leaves the sweep's own folder ------------------------------------------

@pytest.mark.parametrize("name", [".", "..", "../results", "a/b", "/abs", "", "-x", ".hidden", "a\nb"])
def test_restart_with_a_name_that_is_no_slug_deletes_nothing(crowded, capsys, name):
    before = snapshot(crowded)
    spec = spec_file(crowded, name=name)
    code, out, err = run(capsys, spec, "--restart", "--storage", crowded / "parent" / "results")
    assert code == 2, err
    assert f"{spec}: name: expected a slug" in err
    assert "Traceback" not in err and out == ""
    assert snapshot(crowded) == before | {"spec.yaml": spec.read_bytes()}


def test_restart_refuses_a_symlinked_sweep_folder(crowded, capsys):
    elsewhere = crowded / "elsewhere"
    a_sweep(crowded, "elsewhere")  # it even carries a marker naming... "elsewhere"
    (elsewhere / MARKER).write_text(json.dumps({"tool": "pdiff-sweep", "sweep": "smoke", "spec_hash": "x"}))
    (elsewhere / "precious.txt").write_text("keep me")
    results = crowded / "parent" / "results"
    (results / "smoke").symlink_to(elsewhere)
    spec = spec_file(crowded)
    before = snapshot(crowded)
    code, _, err = run(capsys, spec, "--restart", "--storage", results)
    assert code == 2, err
    assert "is a symbolic link" in err and "Nothing deleted" in err
    assert snapshot(crowded) == before


def test_restart_refuses_a_folder_without_the_marker(crowded, capsys):
    results = crowded / "parent" / "results"
    a_sweep(results, "smoke", marked=False)
    (results / "smoke" / "mine.txt").write_text("not the sweep's")
    spec = spec_file(crowded)
    before = snapshot(crowded)
    code, _, err = run(capsys, spec, "--restart", "--storage", results)
    assert code == 2, err
    assert f"has no {MARKER} marker" in err and "Nothing deleted" in err
    assert snapshot(crowded) == before


def test_restart_refuses_the_marker_of_another_sweep(crowded, capsys):
    results = crowded / "parent" / "results"
    a_sweep(results, "smoke")
    (results / "smoke" / MARKER).write_text(json.dumps({"sweep": "other"}))
    spec = spec_file(crowded)
    before = snapshot(crowded)
    code, _, err = run(capsys, spec, "--restart", "--storage", results)
    assert code == 2, err
    assert "names another sweep ('other')" in err
    assert snapshot(crowded) == before


def test_a_normal_run_does_not_adopt_a_folder_holding_foreign_files(crowded, capsys):
    results = crowded / "parent" / "results"
    (results / "smoke").mkdir()
    (results / "smoke" / "thesis.tex").write_text("someone's work")
    spec = spec_file(crowded)
    before = snapshot(crowded)
    code, _, err = run(capsys, spec, "--storage", results)
    assert code == 2, err
    assert "already holds files a sweep does not write (thesis.tex)" in err
    assert snapshot(crowded) == before


def test_restart_deletes_only_its_own_folder(crowded, capsys, monkeypatch):
    """A marked sweep folder is emptied (a link inside is removed, not followed); the other
    sweep, the files beside it and the link's target survive; the marker is written again."""
    results = crowded / "parent" / "results"
    mine = a_sweep(results, "smoke")
    outside = crowded / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (results / "smoke" / "models" / "link").symlink_to(outside)
    (results / "smoke" / "report").symlink_to(outside)
    spec = spec_file(crowded)
    before = snapshot(crowded)

    def stop(*_a, **_k):
        raise KeyboardInterrupt  # stop right after the deletion, before any stage runs
    monkeypatch.setattr(sweep_cli, "connect_ray", lambda *_: None)
    monkeypatch.setattr(sweep_cli, "check_resources", lambda *_: None)
    monkeypatch.setattr(sweep_cli, "check_storage", lambda *_: None)
    monkeypatch.setattr(sweep_cli, "run_sources", stop)
    code, out, err = run(capsys, spec, "--restart", "--storage", results)
    assert code == 130, err
    assert f"restart: deleted the results in {mine.root}" in out
    after = snapshot(crowded)
    # Left: the marker, and this (interrupted) run's own record in the runs table.
    kept = sorted(k for k in after if k.startswith("parent/results/smoke"))
    assert [k for k in kept if not k.startswith("parent/results/smoke/runs")] == [
        "parent/results/smoke", f"parent/results/smoke/{MARKER}"]
    runs = Store(str(results), "smoke").read_pandas("runs")
    assert len(runs) == 1 and runs.outcome.tolist() == ["interrupted"], runs
    assert json.loads((results / "smoke" / MARKER).read_text())["sweep"] == "smoke"
    assert {k: v for k, v in after.items() if not k.startswith("parent/results/smoke")} == {
        k: v for k, v in before.items() if not k.startswith("parent/results/smoke")} | {"spec.yaml": spec.read_bytes()}


def test_store_delete_all_checks_before_deleting(crowded):
    results = crowded / "parent" / "results"
    for bad in (".", "..", "a/b", "../parent"):
        with pytest.raises(NotOurFolder):
            Store(str(results), bad).delete_all()
    unmarked = a_sweep(results, "unmarked", marked=False)
    with pytest.raises(NotOurFolder):
        unmarked.delete_all()
    assert (results / "unmarked" / "trials" / "cell" / "t1.parquet").is_file()
    Store(str(results), "absent").delete_all()  # nothing there: nothing to do
    mine = a_sweep(results, "mine")
    mine.delete_all()
    assert not (results / "mine").exists()
    assert (results / "other" / "trials" / "cell" / "t1.parquet").is_file()
    assert (results / "notes.txt").is_file() and (crowded / "parent" / "beside.txt").is_file()


def test_restart_through_a_symlinked_storage_folder_is_fine(tmp_path):
    """The storage folder itself may be a link (results -> /big/disk); the sweep folder may not."""
    real = tmp_path / "disk"
    real.mkdir()
    (tmp_path / "results").symlink_to(real)
    mine = a_sweep(tmp_path / "results", "mine")
    a_sweep(tmp_path / "results", "other")
    mine.delete_all(keep=(MARKER,))
    assert sorted(os.listdir(real / "mine")) == [MARKER]
    assert (real / "other" / "trials").is_dir()



def test_dropping_a_finished_cells_checkpoints_never_follows_a_link_out_of_the_sweep(tmp_path):
    """`sources.drop_run` deletes `<sweep>/_ray/source-<cell>/` once the cell's rows are written. A link there
    (the run folder itself, or `_ray` pointing elsewhere) must not take anything outside the sweep with it."""
    from orchestrator.stage1.cells import drop_run
    from orchestrator.store import paths

    outside = tmp_path / "precious"
    (outside / "keep").mkdir(parents=True)
    (outside / "keep" / "data.bin").write_bytes(b"x")
    store = a_sweep(tmp_path / "results", "mine")
    run = tmp_path / "results" / "mine" / paths.source_run_dir("c1")
    run.parent.mkdir(parents=True)
    run.symlink_to(outside / "keep")  # the run folder is a link: unlinked, its target kept
    drop_run(store, "c1")
    assert not run.is_symlink() and (outside / "keep" / "data.bin").is_file()

    ray_dir = tmp_path / "results" / "mine" / paths.RAY
    os.rmdir(ray_dir)
    ray_dir.symlink_to(outside)  # `_ray` is a link: the run folder below it lies outside, refused
    (outside / paths.source_run("c9")).mkdir()
    (outside / paths.source_run("c9") / "data.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="outside the sweep"):
        drop_run(store, "c9")
    assert (outside / paths.source_run("c9") / "data.bin").is_file() and (outside / "keep" / "data.bin").is_file()

    os.unlink(ray_dir)
    (ray_dir / paths.source_run("c2")).mkdir(parents=True)
    (ray_dir / paths.source_run("c2") / "checkpoint.pt").write_bytes(b"x")
    drop_run(store, "c2")  # the ordinary case: a real folder inside the sweep goes
    assert not (ray_dir / paths.source_run("c2")).exists() and ray_dir.is_dir()
    drop_run(store, "c3")  # nothing there: nothing to do

# -- 5. fail before work ------------------------------------------------------------------------

def test_storage_that_is_a_file(tmp_path, capsys):
    (tmp_path / "results").write_text("a file")
    spec = spec_file(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, spec, "--storage", tmp_path / "results")
    assert code == 2, err
    assert f"{spec}: storage: " in err and "is a file" in err
    assert snapshot(tmp_path) == before


def test_storage_below_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("a file")
    spec = spec_file(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = run(capsys, spec, "--storage", tmp_path / "afile" / "results")
    assert code == 2, err
    assert f"storage: {tmp_path / 'afile'} is a file" in err
    assert snapshot(tmp_path) == before


def test_storage_with_an_unknown_scheme(tmp_path, capsys):
    spec = spec_file(tmp_path)
    code, _, err = run(capsys, spec, "--storage", "nosuchfs://bucket/prefix")
    assert code == 2, err
    assert f"{spec}: storage: cannot" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["spec.yaml"]


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` made unwritable to this process: chmod 555, and where that does not stop root,
    the immutable attribute (chattr +i), which does. Skips the test where neither works."""
    os.chmod(folder, 0o555)
    immutable = False
    try:
        if os.access(folder, os.W_OK):  # root ignores the mode bits
            immutable = bool(shutil.which("chattr")) and subprocess.run(
                ["chattr", "+i", str(folder)], capture_output=True).returncode == 0
            if not immutable:
                pytest.skip("running as root without chattr +i: no folder is read-only to this process")
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        os.chmod(folder, 0o755)


@pytest.mark.parametrize("existing", ["storage", "sweep folder"])
def test_storage_that_is_read_only(tmp_path, capsys, existing):
    """Read-only storage, or an earlier run's sweep folder that cannot be written any more."""
    storage = tmp_path / "results"
    storage.mkdir()
    (storage / "old.txt").write_text("there before")
    target = storage if existing == "storage" else storage / "smoke"
    target.mkdir(exist_ok=True)
    spec = spec_file(tmp_path)
    with read_only(target):
        before = snapshot(tmp_path)
        code, _, err = run(capsys, spec, "--storage", storage)
        assert snapshot(tmp_path) == before
    assert code == 2, err
    assert f"{spec}: storage: cannot write in {storage / 'smoke'} (" in err
    assert "Traceback" not in err


def test_yaml_alias_bomb_is_refused_fast(tmp_path, capsys):
    """Billion laughs under a valid key: 1 KB that would expand to 10**9 entries."""
    lines = ["name: smoke", "sources: {archs: [mlp], datasets: [digits]}", "pdiff:", "  num_samples: 1",
             "  knobs:", "    ae_steps: 10", "    ae_channels:", "      - &l0 [8, 8, 8, 8, 8, 8, 8, 8, 8, 8]"]
    for i in range(1, 10):
        lines.append(f"      - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    spec = tmp_path / "bomb.yaml"
    spec.write_text("\n".join(lines) + "\n")
    assert spec.stat().st_size < 1500
    start = time.monotonic()
    code, out, err = run(capsys, spec, "--dry-run", "--storage", tmp_path / "store")
    assert time.monotonic() - start < 5
    assert code == 2, err
    assert f"{spec}: pdiff.knobs.ae_channels[1][0]: YAML aliases are not allowed (*l0 at line 9" in err
    assert len(out) + len(err) < 500
    assert sorted(os.listdir(tmp_path)) == ["bomb.yaml"]


@pytest.mark.parametrize("changes, field", [
    ({"sources.collect.k": 1_000_000_000}, "sources.collect.k"),
    ({"sources.train.epochs": 10**40}, "sources.train.epochs"),
    ({"pdiff.knobs.n_generated": 100_001}, "pdiff.knobs.n_generated"),
    ({"pdiff.knobs.ae_steps": 1_000_001}, "pdiff.knobs.ae_steps"),
])
def test_sizes_past_their_maximum(tmp_path, capsys, changes, field):
    spec = spec_file(tmp_path, **changes)
    code, out, err = run(capsys, spec, "--storage", tmp_path / "store")  # a real run, not a dry run
    assert code == 2, err
    assert f"{spec}: {field}: " in err and "above the maximum of" in err
    assert out == "" and sorted(os.listdir(tmp_path)) == ["spec.yaml"]


def test_k_of_a_billion_names_its_maximum(tmp_path, capsys):
    spec = spec_file(tmp_path, **{"sources.collect.k": 1_000_000_000})
    code, _, err = run(capsys, spec, "--storage", tmp_path / "store")
    assert code == 2
    assert err.strip() == f"error: {spec}: sources.collect.k: 1000000000 is above the maximum of " \
                          f"{MAXIMA['sources.collect.k']}"


def test_spec_that_is_not_utf8(tmp_path, capsys):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes(SMOKE.read_text().replace("# The CPU", "# Caf\u00e9: the CPU").encode("latin-1"))
    code, out, err = run(capsys, spec, "--storage", tmp_path / "store")
    assert code == 2, err
    assert f"{spec}: <file>: not UTF-8 text (byte 0xe9 at offset" in err
    assert out == "" and sorted(os.listdir(tmp_path)) == ["latin1.yaml"]


def test_spec_that_is_a_directory(tmp_path, capsys):
    code, out, err = run(capsys, tmp_path, "--storage", tmp_path / "store")
    assert code == 2, err
    assert f"{tmp_path}: <file>: is a directory" in err and "no such file" not in err
    assert out == "" and os.listdir(tmp_path) == []


def test_spec_that_is_not_a_regular_file(capsys):
    code, _, err = run(capsys, "/dev/null", "--dry-run")
    assert code == 2 and "/dev/null: <file>: not a regular file" in err


def test_ctrl_c_before_the_stages_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    def interrupt(*_a, **_k):
        raise KeyboardInterrupt
    monkeypatch.setattr(sweep_cli, "connect_ray", interrupt)
    spec = spec_file(tmp_path)
    code, _, err = run(capsys, spec, "--storage", tmp_path / "store")
    assert code == 130
    assert err.strip().splitlines() == [sweep_cli.INTERRUPTED]
    assert not (tmp_path / "store" / "smoke" / LEASE).exists()  # the lease is released


@pytest.mark.slow
def test_ctrl_c_during_stage_1_is_one_line_and_130(tmp_path):
    """A real run on a local Ray, interrupted as a terminal's Ctrl-C does it once stage 1 has started:
    SIGINT to the whole foreground process group, the sweep and every process it started (Ray's too).
    The console (stdout and stderr, in order) ends with the one interruption line, and no traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    console = tmp_path / "console.txt"
    with open(console, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.sweep", str(SMOKE), "--storage",
                                 str(tmp_path / "store")], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)  # its own group, as a shell's job
        try:
            deadline = time.monotonic() + 240
            # "[    0s] sources: 4 to do": Ray is up and stage 1 has begun (the plan's "stage 1 sources:" is not it)
            while "] sources: " not in console.read_text() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert proc.poll() is None and "] sources: " in console.read_text(), console.read_text()
            time.sleep(1)  # the cells' Ray Train drivers are being started
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):  # whatever is left of the group (the test's own)
                os.killpg(proc.pid, signal.SIGKILL)
            if proc.poll() is None:
                proc.wait(timeout=30)
    output = console.read_text()
    assert proc.returncode == 130, output
    assert output.strip().splitlines()[-1] == sweep_cli.INTERRUPTED, output
    assert output.count(sweep_cli.INTERRUPTED) == 1, output
    assert "Traceback" not in output, output
    assert not (tmp_path / "store" / "smoke" / LEASE).exists()


# -- 6. one run per sweep folder --------------------------------------------------------------

def test_a_second_run_of_the_same_sweep_exits_2_naming_the_holder(tmp_path, capsys):
    spec = spec_file(tmp_path)
    store = Store(str(tmp_path / "store"), "smoke")
    with Lease(store) as held:
        before = snapshot(tmp_path)
        code, _, err = run(capsys, spec, "--storage", tmp_path / "store")
        assert code == 2, err
        assert f"{store.root} is in use by another run of this sweep: host {socket.gethostname()}, " \
               f"pid {os.getpid()}, since " in err
        assert snapshot(tmp_path) == before  # the holder's lease is untouched
        assert json.loads((tmp_path / "store" / "smoke" / LEASE).read_text())["token"] == held.token
    assert not (tmp_path / "store" / "smoke" / LEASE).exists()


def _write_lease(store: Store, **fields) -> None:
    record = {"sweep": store.sweep, "host": "elsewhere", "pid": 1, "token": "old", "start": time.time() - 300,
              "heartbeat": time.time()} | fields
    Path(store.root).mkdir(parents=True, exist_ok=True)
    Path(store.path(LEASE)).write_text(json.dumps(record))


def test_a_fresh_lease_from_another_host_holds(tmp_path):
    store = Store(str(tmp_path), "sw")
    _write_lease(store)
    with pytest.raises(LeaseHeld, match="host elsewhere, pid 1, since"):
        Lease(store).acquire()


def test_a_lease_without_heartbeat_goes_stale(tmp_path):
    store = Store(str(tmp_path), "sw")
    _write_lease(store, heartbeat=time.time() - 61)
    with Lease(store) as lease:
        assert json.loads(Path(store.path(LEASE)).read_text())["token"] == lease.token


def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(tmp_path):
    store = Store(str(tmp_path), "sw")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    _write_lease(store, host=socket.gethostname(), pid=child.pid)
    with Lease(store) as lease:
        assert json.loads(Path(store.path(LEASE)).read_text())["token"] == lease.token


def test_an_unreadable_lease_holds_until_it_is_old(tmp_path):
    store = Store(str(tmp_path), "sw")
    Path(store.root).mkdir(parents=True)
    Path(store.path(LEASE)).write_text("{half a lea")
    with pytest.raises(LeaseHeld):
        Lease(store).acquire()
    os.utime(store.path(LEASE), (time.time() - 120, time.time() - 120))
    with Lease(store):
        pass
    assert not Path(store.path(LEASE)).exists()


def test_the_heartbeat_refreshes_the_lease(tmp_path):
    store = Store(str(tmp_path), "sw")
    with Lease(store, heartbeat_s=0.05) as lease:
        first = json.loads(Path(store.path(LEASE)).read_text())["heartbeat"]
        time.sleep(0.5)
        later = json.loads(Path(store.path(LEASE)).read_text())
        assert later["token"] == lease.token and later["heartbeat"] > first
        assert later["start"] == lease.start and later["host"] == socket.gethostname()


def test_racing_runs_take_a_stale_lease_once(tmp_path):
    store = Store(str(tmp_path), "sw")
    for _ in range(5):
        _write_lease(store, heartbeat=time.time() - 100)
        winners, barrier = [], threading.Barrier(8)

        def race():
            lease = Lease(store, heartbeat_s=3600)
            barrier.wait()
            try:
                lease.acquire()
                winners.append(lease)
            except LeaseHeld:
                pass
        threads = [threading.Thread(target=race) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 1
        assert json.loads(Path(store.path(LEASE)).read_text())["token"] == winners[0].token
        winners[0].release()


def test_a_stale_lease_broken_by_another_run_is_not_broken_twice(tmp_path):
    """Two runs judged the same lease stale; the first replaced it. The second, getting the break
    lock later, must see that the lease is no longer the stale one and leave it alone."""
    store = Store(str(tmp_path), "sw")
    _write_lease(store, heartbeat=time.time() - 100)
    stale = json.loads(Path(store.path(LEASE)).read_text())
    with Lease(store) as first:
        late = Lease(store)
        assert late._stale(stale)
        assert late._break_local(stale) is False
        assert json.loads(Path(store.path(LEASE)).read_text())["token"] == first.token
        assert not Path(store.path(LEASE) + ".break").exists()


def test_lease_on_an_object_store_is_best_effort_but_works():
    store = Store("mock:///bucket/prefix", "sw")
    with Lease(store, settle_s=0.01) as first:
        with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
            Lease(store, settle_s=0.01).acquire()
        assert json.loads(store.read_bytes(LEASE))["token"] == first.token
    with Lease(store, settle_s=0.01):
        pass


def test_load_spec_still_reads_the_shipped_sweeps():
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        assert load_spec(path).name


# -- the same on an object store (moto's S3 server on loopback) -----------------------------------

@pytest.fixture
def s3_storage(monkeypatch):
    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"
    fs, _ = pafs.FileSystem.from_uri(f"s3://pdiff-results/x?{options}&allow_bucket_creation=true")
    fs.create_dir("pdiff-results")
    yield lambda bucket="pdiff-results": f"s3://{bucket}/sweeps?{options}"
    server.stop()


def test_object_store_probe_lease_and_restart(tmp_path, capsys, s3_storage):
    import pyarrow.fs as pafs

    from orchestrator.runtime.cluster import probe_storage

    spec = spec_file(tmp_path)
    code, _, err = run(capsys, spec, "--storage", s3_storage("nosuchbucket"))
    assert code == 2 and f"{spec}: storage: cannot write in s3://nosuchbucket/sweeps/smoke" in err
    assert "Bucket 'nosuchbucket' not found" in err

    uri = s3_storage()
    store = Store(uri, "smoke", "h")
    assert probe_storage(load_spec(spec, storage=uri), store) == []
    keys = lambda: sorted(i.base_name for i in store.fs.get_file_info(  # noqa: E731
        pafs.FileSelector(store.root, recursive=True, allow_not_found=True)) if i.type == pafs.FileType.File)
    assert keys() == []  # the probe file is gone

    with Lease(store, settle_s=0.05) as held:
        code, _, err = run(capsys, spec, "--storage", uri)
        assert code == 2 and f"is in use by another run of this sweep: host {socket.gethostname()}, " \
                              f"pid {os.getpid()}" in err
        assert json.loads(store.read_bytes(LEASE))["token"] == held.token

    store.write_bytes("trials/c/t.parquet", b"rows")
    code, _, err = run(capsys, spec, "--storage", uri, "--restart")
    assert code == 2 and f"has no {MARKER} marker" in err and "Nothing deleted" in err
    assert keys() == ["t.parquet"]
    store.write_marker()
    store.delete_all(keep=(MARKER,))
    assert keys() == [MARKER]
