"""Self-healing tables and failed trials (issue 10, parts 2 and 3).

The reconcile step is checked file kind by file kind on copies of the shared
finished tiny sweep, without Ray (fast). Two real sweeps check the whole loop:
a damaged copy re-run to the clean run's counts, and issue 10's diverging probe
(ae_lr and ldm_lr fixed at 10), whose every trial fails: it completes, stores the
failures and reports.
"""

from __future__ import annotations

import copy
import glob
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from tiny_sweep import TINY, copy_sweep, run_sweep, truncate

from orchestrator.runtime.heal import reconcile
from orchestrator.spec import load_spec
from orchestrator.stage1.cells import pending_cells
from orchestrator.store.errors import CorruptTable
from orchestrator.store.paths import snapshot_scores as scores_relpath, source_model as model_relpath
from orchestrator.store.tables import Store

ROOT = Path(__file__).resolve().parents[1]






def _quarantined(store: Store) -> list[str]:
    base = Path(store.path("quarantine"))
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and not p.name.endswith(".txt"))


def _trial_files(store: Store, table: str, cell_id: str) -> list[str]:
    return store.files(table, cell_id)


# -- reconcile, one kind of damage at a time (no Ray) --------------------------------------------

PROBES = {
    # name: (damage(store, cell0, cell1), cells stage 1 re-runs, trial rows left, must be in quarantine)
    "nothing": (lambda s, a, b: None, set(), 6, []),
    "checkpoints folder deleted": (lambda s, a, b: shutil.rmtree(s.path("checkpoints")), {0, 1}, 0, []),
    "checkpoints file truncated": (lambda s, a, b: truncate(s.path("checkpoints", a, "snapshots.parquet")), {0}, 3,
                                   ["checkpoints/{a}/snapshots.parquet"]),
    "generated folder deleted": (lambda s, a, b: shutil.rmtree(s.path("generated")), set(), 0, []),
    "generated file truncated": (lambda s, a, b: truncate(s.files("generated", b)[0]), set(), 5,
                                 ["generated/{b}/{g0}"]),
    "generated file short": (lambda s, a, b: pq.write_table(pq.read_table(s.files("generated", b)[0]).slice(0, 3),
                                                            s.files("generated", b)[0]), set(), 5,
                             ["generated/{b}/{g0}"]),
    "models folder deleted": (lambda s, a, b: shutil.rmtree(s.path("models")), {0, 1}, 0, []),
    "model weights truncated": (lambda s, a, b: truncate(s.path(model_relpath(a))), {0}, 3, [model_relpath("{a}")]),
    "snapshot scores deleted": (lambda s, a, b: os.remove(s.path(scores_relpath(b))), {1}, 3, []),
    "snapshot scores truncated": (lambda s, a, b: truncate(s.path(scores_relpath(b))), {1}, 3,
                                  [scores_relpath("{b}")]),
    "trials file truncated": (lambda s, a, b: truncate(s.files("trials", a)[0]), set(), 5,
                              ["trials/{a}/{t0}", "generated/{a}/{t0}"]),
    "sources file truncated": (lambda s, a, b: truncate(s.path("sources", a, "source.parquet")), {0}, 3,
                               ["sources/{a}/source.parquet"]),
    "sources file deleted": (lambda s, a, b: os.remove(s.path("sources", a, "source.parquet")), {0}, 3, []),
    "baselines file truncated": (lambda s, a, b: truncate(s.path("baselines", b, "baselines.parquet")), set(), 6,
                                 ["baselines/{b}/baselines.parquet"]),
    "baselines file short": (lambda s, a, b: pq.write_table(pq.read_table(s.path("baselines", b, "baselines.parquet"))
                                                            .slice(0, 5), s.path("baselines", b, "baselines.parquet")),
                             set(), 6, ["baselines/{b}/baselines.parquet"]),
}


@pytest.mark.parametrize("probe", list(PROBES))
def test_reconcile_quarantines_and_schedules_rebuild(probe, finished_sweep, tiny_spec, tmp_path):
    spec, store = copy_sweep(finished_sweep, tiny_spec, tmp_path)
    a, b = (c.cell_id for c in spec.cells)
    names = {"a": a, "b": b, "g0": os.path.basename(store.files("generated", b)[0]),
             "t0": os.path.basename(store.files("trials", a)[0])}
    damage, rebuilt, trials_left, must_hold = PROBES[probe]
    damage(store, a, b)
    lines: list[str] = []

    reconcile(spec, store, lines.append)

    store.check()  # no unreadable file is left in any table
    assert {c.cell_id for c in pending_cells(spec, store)} == {spec.cells[i].cell_id for i in rebuilt}
    assert store.read("trials").num_rows == trials_left
    held = _quarantined(store)
    for rel in must_hold:
        assert rel.format(**names) in held, (rel, held)
    for i in rebuilt:  # stage 1 re-runs the cell: nothing built from its old snapshots stays
        cell = spec.cells[i].cell_id
        assert all(not store.files(t, cell) for t in ("trials", "generated", "baselines"))
        assert any(cell in line and "stage 1" in line for line in lines), lines
    # completed trials keep a full generated file; every trial file has its row
    gen = {os.path.basename(f): pq.read_metadata(f).num_rows for f in store.files("generated")}
    for f in store.files("trials"):
        assert gen.get(os.path.basename(f)) == TINY["pdiff"]["knobs"]["n_generated"]
    if probe == "nothing":
        assert lines == [] and held == []
    else:
        assert lines and all(line.startswith("heal: ") for line in lines)
    for rel in held:  # each quarantined file says why it was moved
        assert Path(store.path("quarantine", rel + ".reason.txt")).read_text().strip()
    # A second pass finds nothing more to do.
    again: list[str] = []
    reconcile(spec, store, again.append)
    assert again == []


def test_quarantine_never_overwrites(tmp_path):
    store = Store(str(tmp_path), "s")
    for i in range(3):
        store.write("trials", "c", "t", [{"trial_id": f"t{i}"}])
        store.quarantine(store.path("trials", "c", "t.parquet"), f"round {i}")
    held = sorted(p.name for p in Path(store.path("quarantine", "trials", "c")).iterdir())
    assert held == ["t.parquet", "t.parquet.1", "t.parquet.1.reason.txt", "t.parquet.2", "t.parquet.2.reason.txt",
                    "t.parquet.reason.txt"]
    assert pq.read_table(store.path("quarantine", "trials", "c", "t.parquet.2")).column("trial_id")[0].as_py() == "t2"
    with pytest.raises(ValueError):
        store.quarantine(str(tmp_path / "elsewhere.parquet"), "outside")


def test_corrupt_message_says_what_happens(tmp_path):
    store = Store(str(tmp_path), "s")
    store.write("trials", "c", "t", [{"trial_id": "t"}])
    truncate(store.files("trials")[0])
    with pytest.raises(CorruptTable) as info:
        store.read("trials")
    assert "quarantine" in str(info.value) and "will be run again" not in str(info.value)


def test_study_records_failed_trials_as_failures(tiny_spec):
    from optuna.trial import TrialState

    from orchestrator.stage2.study import rebuild_study

    spec = load_spec(tiny_spec)
    rows = [{"latent_noise": 0.05, "latent_dim": 16, "status": "completed", "val_acc_pct": 90.0, "val_max_iou": 0.5},
            {"latent_noise": 0.2, "latent_dim": 32, "status": "failed", "val_acc_pct": None, "val_max_iou": None,
             "reason": "autoencoder loss went non-finite"},
            {"latent_noise": 0.1, "latent_dim": 32, "status": "stopped", "val_acc_pct": 50.0, "val_max_iou": None}]
    storage, name, _, _ = rebuild_study(spec, spec.cells[0], rows)
    import optuna

    trials = optuna.load_study(study_name=name, storage=storage).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED]
    assert trials[1].values is None


# -- real sweeps ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_damaged_sweep_rebuilds_to_clean_counts(finished_sweep, tiny_spec, tmp_path):
    """One re-run heals several kinds of damage at once: a truncated model file (its cell re-runs
    from stage 1), a deleted generated file and a truncated trials file (those trials re-run), a
    truncated baselines file (re-run)."""
    from test_sweep_e2e import _keys

    spec, store = copy_sweep(finished_sweep, tiny_spec, tmp_path)
    a, b = (c.cell_id for c in spec.cells)
    truncate(store.path(model_relpath(a)))
    gen_b = store.files("generated", b)
    os.remove(gen_b[0])
    trials_b = store.files("trials", b)
    lost_trial = next(f for f in trials_b if os.path.basename(f) != os.path.basename(gen_b[0]))
    truncate(lost_trial)
    truncate(store.path("baselines", b, "baselines.parquet"))
    kept_b = os.path.basename(next(f for f in trials_b if f != lost_trial and
                                   os.path.basename(f) != os.path.basename(gen_b[0])))

    out = run_sweep(tiny_spec, tmp_path).stdout

    assert _keys(store) == _keys(finished_sweep)
    trials = store.read_pandas("trials")
    generated = store.read_pandas("generated", columns=["cell_id", "trial_id", "index"])
    assert trials.trial_id.is_unique and not generated.duplicated().any()
    assert set(generated.trial_id) == set(trials.trial_id) and (trials.status == "completed").all()
    assert kept_b in {os.path.basename(f) for f in store.files("trials", b)}  # sound trials untouched
    held = _quarantined(store)
    for rel in (model_relpath(a), f"trials/{b}/{os.path.basename(lost_trial)}", f"baselines/{b}/baselines.parquet"):
        assert rel in held, held
    # the console says what was rebuilt and why
    assert f"heal: cell {a}: {model_relpath(a)} corrupt" in out and "rebuilding it from stage 1" in out
    assert "no generated file" in out and "is not a readable Parquet file: moved to quarantine/" in out
    assert "sources: 1/2 already done" in out and f"sources 2/2: {a}" in out
    # CPU stage 1 is deterministic: the rebuilt cell's snapshots are the clean run's
    rebuilt = store.read_pandas("checkpoints", a).sort_values("index")
    clean = finished_sweep.read_pandas("checkpoints", a).sort_values("index")
    assert np.allclose(np.stack(rebuilt.params.to_list()), np.stack(clean.params.to_list()), atol=1e-6)


DIVERGING = copy.deepcopy(TINY)
DIVERGING["name"] = "diverging"
DIVERGING["sources"]["archs"] = ["mlp"]
# Issue 10's probe: fixed `ae_lr: 10, ldm_lr: 10` in a spec that still searches its other knobs (as the
# smoke spec does; here latent_dim, a two-point grid). Every trial diverges: none completes.
DIVERGING["pdiff"]["knobs"] = {k: v for k, v in TINY["pdiff"]["knobs"].items() if k != "latent_noise"} | {
    "ae_lr": 10, "ldm_lr": 10,
}
DIVERGING["pdiff"] |= {"search": "grid", "num_samples": 2, "objective": ["accuracy"],
                       "early_stopping": {"grace_period": 1}}


@pytest.mark.slow
def test_diverging_trial_is_stored_failed_and_the_sweep_completes(tmp_path):
    """Issue 10's probe, fixed ae_lr 10 and ldm_lr 10 (ASHA on), where no trial completes: each trial has a
    'failed' row with its reason and no generated rows, Optuna records it as FAIL (not a number), Tune does
    not retry it, the search still runs its other point, and the sweep exits 0 with a report; the printed
    summary, the report and the summary query count the 2 failed trials."""
    spec_path = tmp_path / "diverging.yaml"
    spec_path.write_text(yaml.safe_dump(DIVERGING))
    out = run_sweep(spec_path, tmp_path).stdout  # asserts exit 0
    store = Store(str(tmp_path), "diverging")

    trials = store.read_pandas("trials")
    assert len(trials) == 2 and sorted(trials.latent_dim) == [16, 32]
    assert (trials.status == "failed").all() and (trials.ae_lr == 10).all() and (trials.ldm_lr == 10).all()
    assert all(isinstance(r, str) and r.strip() for r in trials.reason), trials.reason.tolist()
    assert trials.val_acc_pct.isna().all()
    assert store.read_pandas("generated", columns=["trial_id"]).empty
    for t in trials.itertuples():
        assert f"trial {t.trial_id} failed: {t.reason}" in out
    assert "trials 2/2: " in out

    # the printed summary: no completed trial, 2 failed
    lines = out.splitlines()
    printed = {}  # the summary is split into parts of at most 120 columns, each headed "arch dataset seed ..."
    for i, line in enumerate(lines[:-1]):
        if line.split()[:3] == ["arch", "dataset", "seed"]:
            printed.update(zip(line.split(), lines[i + 1].split()))
    assert printed["failed_trials"] == "2" and printed["trials"] in ("<NA>", "n/a"), printed
    assert printed["pdiff_selected"] == "n/a"
    # the report (written, not crashed on a cell without completed trials) and the query layer
    index = Path(store.path("report", "index.html"))
    assert index.is_file() and f"report: {index}" in out
    md = (index.parent / "summary.md").read_text()
    assert "mlp / digits / seed 0: 2 failed trial(s), left out of the summary and the figures (reason: " in md
    assert pd.read_csv(index.parent / "summary.csv").failed_trials.tolist() == [2]
    from orchestrator.results.summary import summary
    row = summary(store).iloc[0]
    assert row.failed_trials == 2 and pd.isna(row.trials) and pd.isna(row.pdiff_selected)

    # Optuna saw failures, not values; Tune ran each trial once (no error, so no retry)
    [state] = glob.glob(store.path("_ray", "pdiff-*", "searcher-state-*.pkl"))
    with open(state, "rb") as f:
        study = pickle.load(f)["_ot_study"]
    assert sorted((t.params["latent_dim"], t.state.name, t.values) for t in study.trials) == [
        (16, "FAIL", None), (32, "FAIL", None)]
    assert not glob.glob(store.path("_ray", "pdiff-*", "*", "error.txt"))
