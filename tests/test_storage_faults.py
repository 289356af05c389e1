"""A storage fault is not a verdict (issue 17, part 2): a full disk (or a quota, a lost connection) in stage 2
stops the sweep with exit 1 and one line, records no trial as failed, leaves no temporary file, and the re-run
once the fault is cleared completes the sweep to the counts of an uninterrupted one.

Fast checks of each piece in-process; two real sweeps on a local Ray (subprocess), each resuming a copy of the
shared finished tiny sweep's stage 1: one with the fault injected into `Store` writes in every process (driver
and Ray workers, through a `sitecustomize` on PYTHONPATH), one on a real full tmpfs where the test may mount one.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from tiny_sweep import CELLS, ROOT, TRIALS, run_sweep, sweep_command, sweep_env

from orchestrator.store.errors import StorageFault, storage_fault
from orchestrator.store.lease import Lease
from orchestrator.store.ownership import LEASE
from orchestrator.store.tables import Store


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# -- the pieces (no Ray) ---------------------------------------------------------------------------------

def test_a_failed_write_is_a_storage_fault_and_leaves_no_temporary_file(tmp_path):
    store = Store(str(tmp_path), "s")
    store.write("trials", "c", "t", [{"trial_id": "t"}])

    def half(sink):
        sink.write(b"PAR1 half a file")
        _enospc()

    with pytest.raises(StorageFault) as info:
        store._put(store.path("trials", "c", "t.parquet"), half)
    assert "No space left on device" in str(info.value) and store.path("trials", "c", "t.parquet") in str(info.value)
    assert sorted(p.name for p in Path(store.path("trials", "c")).iterdir()) == ["t.parquet"]  # the old file, whole
    assert store.read("trials").num_rows == 1


@pytest.mark.parametrize("err, fault", [
    (OSError(errno.ENOSPC, "No space left on device"), True),
    (OSError(errno.EDQUOT, "Disk quota exceeded"), True),
    (OSError("When uploading part for key 'x': AWS Error NETWORK_CONNECTION during UploadPart operation"), True),
    (StorageFault("cannot write x: no space"), True),
    (RuntimeError("wrapped"), True),  # raised while handling a full disk (its __context__)
    (FileNotFoundError(errno.ENOENT, "No such file"), False),
    (ValueError("not storage"), False),
])
def test_which_errors_are_storage_faults(err, fault):
    if isinstance(err, RuntimeError):
        try:
            try:
                _enospc()
            except OSError:
                raise err
        except RuntimeError as raised:
            err = raised
    assert (storage_fault(err) is not None) == fault
    if fault:
        assert "[Errno" not in str(storage_fault(err))


def test_a_ray_task_error_carries_the_fault():
    import ray.exceptions

    try:
        raise StorageFault("cannot write /x/generated/c/t.parquet: No space left on device")
    except StorageFault as err:
        wrapped = ray.exceptions.RayTaskError("_search_cell", "Traceback ...\n(long)", err)
    assert str(storage_fault(wrapped)) == "cannot write /x/generated/c/t.parquet: No space left on device"


def test_a_full_disk_leaves_no_temporary_file_beside_the_lease(tmp_path, monkeypatch):
    """Probe 3's stray `._lease.json.*.tmp`: the heartbeat's write fails on a full disk."""
    store = Store(str(tmp_path), "s")
    lease = Lease(store, heartbeat_s=3600).acquire()
    try:
        real = os.replace
        monkeypatch.setattr(os, "replace", lambda *a: _enospc())
        with pytest.raises(OSError):
            lease._replace_local()
        monkeypatch.setattr(os, "replace", real)

        def failing_payload():
            _enospc()
        monkeypatch.setattr(lease, "_payload", failing_payload)
        with pytest.raises(OSError):
            lease._tmp()
    finally:
        lease.release()
    assert sorted(os.listdir(store.root)) == []  # neither a temporary file nor the lease


# -- real sweeps -------------------------------------------------------------------------------------------

# Loaded by every Python process of the faulted sweep (the driver and Ray's workers): once orchestrator.store.tables
# is imported, `Store._put` lets the first N writes of stage 2's files through and then fails every write as a
# full disk does: half the bytes written, then ENOSPC.
SITECUSTOMIZE = '''
import errno, os, sys
from importlib.machinery import PathFinder

SETTING = os.environ.get("PDIFF_TEST_ENOSPC")  # "<counter file>:<stage-2 writes that succeed>"
STAGE2 = {"trials", "generated", "curves", "baselines", "models", "optuna"}


def _patch(tables):
    counter, allowed = SETTING.rsplit(":", 1)
    put = tables.Store._put

    def _put(self, final, write):
        full = os.path.exists(counter) and os.path.getsize(counter) >= int(allowed)
        if full:
            def write(sink):
                sink.write(b"PAR1 half a file")
                raise OSError(errno.ENOSPC, "No space left on device")
        elif final[len(self.root) + 1:].split("/", 1)[0] in STAGE2:
            with open(counter, "ab") as f:
                f.write(b".")
        return put(self, final, write)

    tables.Store._put = _put


class _PatchTables:
    def find_spec(self, name, path=None, target=None):
        if name != "orchestrator.store.tables":
            return None
        spec = PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if SETTING:
    sys.meta_path.insert(0, _PatchTables())
'''

STAGE1 = ("sources", "checkpoints", "_sweep.json")  # and models/*.pt (not models/trials)


def _stage1_copy(finished: Store, storage: Path) -> Store:
    """The finished tiny sweep as it was after stage 1: its sources, snapshots and source models."""
    root = storage / finished.sweep
    root.mkdir(parents=True)
    for name in STAGE1:
        src = Path(finished.path(name))
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    (root / "models").mkdir()
    for f in Path(finished.path("models")).glob("*.pt"):
        shutil.copy2(f, root / "models" / f.name)
    return Store(str(storage), finished.sweep)


def _faulted_sweep(spec: Path, storage: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(sweep_command(spec, storage), cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def _check_fault_then_resume(proc, store: Store, finished: Store, spec: Path, storage: Path) -> None:
    from test_sweep_e2e import _keys

    where = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 1, where
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: the sweep's storage failed: "), where
    assert "No space left on device" in errors[0] and "re-run the same command" in errors[0]
    assert "Traceback" not in proc.stdout + proc.stderr and "] done;" not in proc.stdout
    assert f"] trials: {CELLS * TRIALS} to do" in proc.stdout  # it struck in stage 2
    trials = store.read_pandas("trials")
    assert set(trials.status) <= {"completed"}, trials[["trial_id", "status", "reason"]]  # no verdict stored
    assert len(trials) < len(finished.read_pandas("trials"))  # the fault struck before the end
    left = [str(p) for p in Path(store.root).rglob("*") if p.name.endswith(".tmp")]
    assert left == [] and not Path(store.path(LEASE)).exists()
    faulted_run = store.read_pandas("runs").run_id.tolist()

    out = run_sweep(spec, storage).stdout  # the fault cleared: asserts exit 0

    assert _keys(store) == _keys(finished)
    trials = store.read_pandas("trials")
    assert (trials.status == "completed").all() and trials.trial_id.is_unique
    generated = store.read_pandas("generated", columns=["trial_id"])
    assert set(generated.trial_id) == set(trials.trial_id)
    assert "] done;" in out
    runs = store.read_pandas("runs").set_index("run_id")
    assert len(runs) == 2 and runs.outcome.drop(faulted_run).tolist() == ["done"]
    # the faulted run's row: 'failed' where its end could be written, else 'abandoned' by the re-run
    assert runs.loc[faulted_run[0], "outcome"] in ("failed", "abandoned")


@pytest.mark.slow
def test_disk_full_in_stage_2_then_the_rerun_completes(finished_sweep, tiny_spec, tmp_path):
    """Probe 3, the fault injected at the storage layer: stage 2's writes fail with ENOSPC after 5 of them."""
    storage = tmp_path / "results"
    store = _stage1_copy(finished_sweep, storage)
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = sweep_env() | {"PYTHONPATH": os.pathsep.join(filter(None, [str(inject), os.environ.get("PYTHONPATH")])),
                         "PDIFF_TEST_ENOSPC": f"{tmp_path / 'writes'}:5"}

    proc = _faulted_sweep(tiny_spec, storage, env)

    assert (tmp_path / "writes").stat().st_size == 5, "the injection did not reach the stage-2 writers"
    _check_fault_then_resume(proc, store, finished_sweep, tiny_spec, storage)


@pytest.mark.cluster  # a storage tier (make test-cluster): the injected fault above covers the default suite
def test_a_real_full_tmpfs_in_stage_2_then_the_rerun_completes(finished_sweep, tiny_spec, tmp_path):
    """Probe 3 as it was found: the storage a 20 MB tmpfs, filled (by a file beside the sweep's folder) to 400 KB
    short of full, which stage 2 runs out of; the re-run after that file is removed completes the sweep."""
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({' '.join(mounted.stderr.split()) or 'not permitted'}); "
                    f"test_disk_full_in_stage_2_then_the_rerun_completes injects the fault instead")
    try:
        store = _stage1_copy(finished_sweep, mount)
        ballast = mount / "ballast"
        with open(ballast, "wb") as f:
            f.write(bytes(shutil.disk_usage(mount).free - 400_000))

        proc = _faulted_sweep(tiny_spec, mount, sweep_env())

        ballast.unlink()
        _check_fault_then_resume(proc, store, finished_sweep, tiny_spec, mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
