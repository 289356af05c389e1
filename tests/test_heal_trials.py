"""Healing reaches every artefact a later command needs (issue 17, parts 3 and 6): the trials' generator files
(`models/trials/`) that `generate` samples from, and the runs table, where a run that died without recording its
end is marked `abandoned` by the run that takes the sweep over.

On copies of the shared finished tiny sweep, without Ray (fast).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
from tiny_sweep import CELLS, TRIALS, copy_sweep, truncate

from orchestrator.generate import main as generate_main
from orchestrator.results.sections import runs_frame
from orchestrator.results.views import connect
from orchestrator.runtime.heal import reconcile
from orchestrator.stage2.search import finished_trials
from orchestrator.store import paths
from orchestrator.store.lease import Lease
from orchestrator.store.ownership import LEASE
from orchestrator.store.runs import RunRecord
from orchestrator.store.tables import Store


def _completed(store: Store) -> list[tuple[str, str]]:
    trials = store.read_pandas("trials")
    return sorted(zip(trials[trials.status == "completed"].cell_id, trials[trials.status == "completed"].trial_id))


# -- the trials' generator files ------------------------------------------------------------------

def test_missing_generators_rerun_their_trials(finished_sweep, tiny_spec, tmp_path):
    """Probe 4: `rm -rf <sweep>/models/trials`: every completed trial is re-run, each with a `heal:` line."""
    spec, store = copy_sweep(finished_sweep, tiny_spec, tmp_path)
    done = _completed(store)
    assert len(done) == CELLS * TRIALS
    shutil.rmtree(store.path("models", "trials"))
    lines: list[str] = []

    reconcile(spec, store, lines.append)

    for cell_id, trial_id in done:
        assert any(line.startswith(f"heal: trial {trial_id} of cell {cell_id}: its generator "
                                   f"{paths.trial_model(cell_id, trial_id)} is missing") for line in lines), lines
    assert len(lines) == len(done)
    assert store.read("trials").num_rows == 0 and store.read("generated", columns=["trial_id"]).num_rows == 0
    for cell in spec.cells:  # so stage 2 runs them all again
        assert finished_trials(store, spec, cell) == []
    assert (Path(store.path("quarantine", "trials")).is_dir())
    again: list[str] = []
    reconcile(spec, store, again.append)
    assert again == []


def test_unloadable_generator_reruns_its_trial_only(finished_sweep, tiny_spec, tmp_path):
    spec, store = copy_sweep(finished_sweep, tiny_spec, tmp_path)
    (cell_id, bad), (_, good) = _completed(store)[:2]
    model = paths.trial_model(cell_id, bad)
    truncate(store.path(model))
    lines: list[str] = []

    reconcile(spec, store, lines.append)

    assert len(lines) == 1 and lines[0].startswith(f"heal: trial {bad} of cell {cell_id}: its generator {model} is "
                                                   f"corrupt ("), lines
    left = set(store.read_pandas("trials").trial_id)
    assert bad not in left and good in left and len(left) == CELLS * TRIALS - 1
    assert Path(store.path("quarantine", model)).is_file()  # moved aside, never deleted
    assert "trial re-run" in Path(store.path("quarantine", model + ".reason.txt")).read_text()
    assert not Path(store.path(model)).exists()


@pytest.mark.parametrize("damage, problem", [("delete", "missing"), ("truncate", "corrupt"), ("folder", "missing")])
def test_generate_says_what_is_wrong_with_the_generator_in_one_line(finished_sweep, tmp_path, capsys, damage, problem,
                                                                      monkeypatch):
    monkeypatch.chdir(tmp_path)  # generate's default output folder is ./generated
    shutil.copytree(finished_sweep.root, tmp_path / "tiny", ignore=shutil.ignore_patterns("_ray", "report", "_lease*"))
    store = Store(str(tmp_path), "tiny")
    cell_id, trial_id = _completed(store)[0]
    model = store.path(paths.trial_model(cell_id, trial_id))
    {"delete": os.remove, "truncate": truncate,
     "folder": lambda p: shutil.rmtree(store.path("models", "trials"))}[damage](model)

    assert generate_main([store.root, trial_id, "-n", "2"]) == 2

    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"error: trial {trial_id} has no usable generator: {model} is {problem}")
    assert "Re-running the sweep rebuilds it" in err and "ran before trials kept their models" not in err
    assert not (tmp_path / "generated").exists()  # nothing written


# -- the runs table: abandoned runs ------------------------------------------------------------------

def _stale_lease(store: Store, **fields) -> None:
    Path(store.root).mkdir(parents=True, exist_ok=True)
    Path(store.path(LEASE)).write_text(json.dumps({"sweep": store.sweep, "host": "elsewhere", "pid": 4242,
                                                   "token": "dead", "start": time.time() - 500,
                                                   "heartbeat": time.time() - 100} | fields))


def _runs(store: Store) -> dict[str, dict]:
    return {r["run_id"]: r for r in store.read("runs").to_pylist()}


def test_a_run_left_running_is_marked_abandoned_by_the_run_that_takes_over(tmp_path):
    """Probe 11 without a kill: a 'running' row and the stale lease of its dead run; the next run takes the
    lease over and, as its own row is written, marks the dead one 'abandoned' naming itself. Finished runs
    keep their rows as they were."""
    store = Store(str(tmp_path), "s", "h1")
    finished = RunRecord(store, "python -m orchestrator.sweep s.yaml").start()
    finished.end("done", 0)
    dead = RunRecord(store, "python -m orchestrator.sweep s.yaml").start()  # then kill -9: no end, no release
    _stale_lease(store, host=socket.gethostname(), pid=2**22 + 12345, heartbeat=time.time())  # a dead pid here
    before = _runs(store)
    assert before[dead.run_id]["outcome"] == "running"

    with Lease(store) as lease:
        assert json.loads(Path(store.path(LEASE)).read_text())["token"] == lease.token  # taken over
        taker = RunRecord(Store(str(tmp_path), "s", "h2"), "python -m orchestrator.sweep s.yaml --x").start()
        runs = _runs(store)
        assert runs[taker.run_id]["outcome"] == "running"
        gone = runs[dead.run_id]
        assert gone["outcome"] == "abandoned" and taker.run_id in gone["error"]
        assert gone["ended_at"] is None and gone["exit_status"] is None
        # the rest of its row is as the dead run wrote it (its spec hash, its start, its command)
        assert {k: v for k, v in gone.items() if k not in ("outcome", "error")} == \
            {k: v for k, v in before[dead.run_id].items() if k not in ("outcome", "error")}
        assert runs[finished.run_id] == before[finished.run_id]
        taker.end("done", 0)
    assert len(store.files("runs")) == 3  # rows replaced in place, none added

    # The report's Runs table shows it.
    with connect(store, ["runs"]) as con:
        shown = runs_frame(con).set_index("run")
    assert shown.loc[dead.run_id, "outcome"] == "abandoned"
    assert shown.loc[taker.run_id, "outcome"] == "done (0)" and shown.loc[finished.run_id, "outcome"] == "done (0)"


def test_a_second_start_does_not_abandon_itself_or_a_run_it_already_marked(tmp_path):
    store = Store(str(tmp_path), "s")
    dead = RunRecord(store, "a").start()
    first = RunRecord(store, "b").start()
    first.start()  # idempotent for its own row
    runs = _runs(store)
    assert runs[first.run_id]["outcome"] == "running" and runs[dead.run_id]["outcome"] == "abandoned"
    RunRecord(store, "c").start()  # a later run leaves the abandoned row alone (still naming `first`)
    runs = _runs(store)
    assert first.run_id in runs[dead.run_id]["error"] and runs[first.run_id]["outcome"] == "abandoned"
