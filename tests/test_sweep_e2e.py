"""End to end: real sweeps on a local Ray, driven through the command line, checked in the tables."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tiny_sweep import CELLS, TRIALS, K, N, run_sweep, sweep_command, sweep_env

from orchestrator.results.views import connect
from orchestrator.store.schema import SCHEMA_VERSION
from orchestrator.store.tables import Store

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def finished(finished_run):
    return finished_run


def _keys(store: Store) -> dict[str, object]:
    """What an interrupted-and-resumed sweep must end with, exactly as an uninterrupted one."""
    trials = store.read_pandas("trials")
    gen = store.read_pandas("generated", columns=["cell_id", "trial_id", "index"])
    return {
        "sources": sorted(store.read_pandas("sources").cell_id),
        "checkpoints": sorted(map(tuple, store.read_pandas("checkpoints")[["cell_id", "index"]].values.tolist())),
        "baselines": sorted(map(tuple, store.read_pandas("baselines")[["cell_id", "method", "index"]]
                                .values.tolist())),
        "trials_per_cell": trials.groupby("cell_id").size().to_dict(),
        "generated_per_cell": gen.groupby("cell_id").size().to_dict(),
    }


def test_tables_complete_and_consistent(finished):
    store, proc = finished
    sources = store.read_pandas("sources")
    checkpoints = store.read_pandas("checkpoints")
    trials = store.read_pandas("trials")
    generated = store.read_pandas("generated")
    baselines = store.read_pandas("baselines")

    assert len(sources) == CELLS and sources.cell_id.is_unique
    assert set(sources.arch) == {"mlp", "cnn_small"}
    assert len(checkpoints) == CELLS * K
    assert not checkpoints.duplicated(["cell_id", "index"]).any()
    assert {len(p) for p in checkpoints.params} == set(sources.n_subset)  # cnn_small 394, mlp 650 params
    assert len(trials) == CELLS * TRIALS and trials.trial_id.is_unique
    assert (trials.status == "completed").all()
    assert len(generated) == CELLS * TRIALS * N
    assert not generated.duplicated(["cell_id", "trial_id", "index"]).any()
    assert set(generated.trial_id) == set(trials.trial_id)
    assert len(baselines) == CELLS * 3 * N and set(baselines.method) == {"noise", "average", "gaussian"}

    # Hyperparameters are columns; fixed knobs too.
    for knob in ("latent_noise", "latent_dim", "ae_steps", "sampler"):
        assert knob in trials.columns
    assert set(trials.latent_dim) <= {16, 32} and trials.latent_noise.between(0.01, 0.3).all()
    assert (trials.ae_steps == 40).all()
    # The autoencoder's stopping rule and the family's collapse signals are stored per trial.
    assert trials.ae_steps_taken.between(1, 40).all() and trials.ae_r2.le(1).all()
    assert (~trials.ae_converged | (trials.ae_r2 >= 0.95)).all()  # converged: R2 reached (and accuracy kept)
    assert trials.pairwise_iou.between(0, 1).all() and trials.distinct_sets.between(1, N).all()
    assert (trials.spread_ratio > 0).all()
    assert (trials.collapsed == ((trials.pairwise_iou >= 0.99) | (trials.spread_ratio < 0.05))).all()
    for _, cell_trials in trials.groupby("cell_id"):
        assert sorted(cell_trials.trial_index) == list(range(TRIALS))
    assert sources.snapshot_pairwise_iou.between(0, 1).all() and (sources.snapshot_distinct_sets >= 1).all()

    # Accuracies in range and far above chance (10 classes) on digits.
    for frame in (checkpoints, generated, baselines):
        assert frame.test_acc.between(0, 1).all() and frame.val_acc.between(0, 1).all()
    assert (sources.test_acc > 0.85).all()
    assert trials.selected_acc_pct.between(50, 100).all() and trials.val_acc_pct.between(50, 100).all()
    for frame in (generated, baselines):
        assert frame.test_max_iou.between(0, 1).all() and frame.val_max_iou.between(0, 1).all()

    # Each model's wrong-prediction sets are stored (packed bits over the split's n examples) and agree with its
    # accuracies; the trial's max-IoU columns are its generated models' means, computed from the same sets.
    import numpy as np

    from pdiff.evaluate import iou_matrix, unpack_wrong_rows

    n = sources.set_index("cell_id")[["n_val", "n_test"]]
    for frame in (checkpoints, generated, baselines):
        for cell_id, rows in frame.groupby("cell_id"):
            for split in ("val", "test"):
                wrong = unpack_wrong_rows(rows[f"{split}_wrong"], int(n.loc[cell_id, f"n_{split}"]))
                acc = 1 - wrong.sum(1).numpy() / wrong.shape[1]
                np.testing.assert_allclose(acc, rows[f"{split}_acc"], atol=1e-6)
    for t in trials.itertuples():
        g = generated[generated.trial_id == t.trial_id]
        assert t.test_max_iou == pytest.approx(g.test_max_iou.mean()) and t.val_max_iou == pytest.approx(
            g.val_max_iou.mean())
        snaps = checkpoints[checkpoints.cell_id == t.cell_id]
        for split in ("val", "test"):
            size = int(n.loc[t.cell_id, f"n_{split}"])
            iou = iou_matrix(unpack_wrong_rows(g[f"{split}_wrong"], size),
                             unpack_wrong_rows(snaps[f"{split}_wrong"], size)).max(1).values.numpy()
            np.testing.assert_allclose(iou, g[f"{split}_max_iou"], atol=1e-6)

    # Every row says where it came from.
    for frame in (sources, checkpoints, trials, generated, baselines):
        assert (frame.sweep == "tiny").all() and frame.spec_hash.str.len().eq(12).all()
        assert frame.spec_hash.nunique() == 1 and (frame.schema_version == SCHEMA_VERSION).all()

    # The trial's summary columns are computed from its own generated rows.
    t = trials.iloc[0]
    g = generated[generated.trial_id == t.trial_id].sort_values("index")
    assert t.mean_acc_pct == pytest.approx(100 * g.test_acc.mean(), abs=1e-3)
    assert t.selected_acc_pct == pytest.approx(100 * g.test_acc.iloc[g.val_acc.values.argmax()], abs=1e-3)
    assert t.best_test_acc_pct == pytest.approx(100 * g.test_acc.max(), abs=1e-3)
    assert t.val_acc_pct == pytest.approx(100 * g.val_acc.max(), abs=1e-3)

    out = proc.stdout
    assert "sources 2/2" in out and "trials 6/6" in out and "baselines 2/2" in out
    assert "original_best" in out and "pdiff_selected" in out  # the summary table


def test_feedback_curves_runs_and_journal(finished):
    """Each trial's AE and LDM losses in `curves` (written before its trials row), a `runs` row per run of the
    command, and each cell's Optuna study as a journal (`<sweep>/optuna/<cell_id>.log`) that Optuna opens."""
    import platform
    from importlib import metadata

    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    store, _ = finished
    trials, curves = store.read_pandas("trials"), store.read_pandas("curves")
    assert set(curves.trial_id) == set(trials.trial_id) and set(curves.phase) == {"ae", "ldm"}
    assert (curves.sweep == "tiny").all() and (curves.schema_version == SCHEMA_VERSION).all()
    for t in trials.itertuples():
        c = curves[curves.trial_id == t.trial_id]
        assert (c.cell_id == t.cell_id).all() and not c.duplicated(["phase", "step"]).any()
        ae, ldm = (c[c.phase == p].sort_values("step") for p in ("ae", "ldm"))
        # 40 steps each: under 200 points, so every step's own loss
        assert ae.step.tolist() == list(range(t.ae_steps_taken)) and ldm.step.tolist() == list(range(t.ldm_steps))
        assert ae.loss.iloc[-1] < ae.loss.iloc[0], ae.loss.tolist()
        assert t.ae_loss == pytest.approx(ae.loss.tail(20).mean()) and t.ldm_loss == pytest.approx(
            ldm.loss.tail(20).mean())  # the trial's losses are the tail means of the same curves
        name = f"{t.trial_id}.parquet"
        assert os.path.getmtime(store.path("curves", t.cell_id, name)) <= os.path.getmtime(
            store.path("trials", t.cell_id, name))  # before the trials row, the commit marker

    runs = store.read_pandas("runs").sort_values("started_at")
    first = runs.iloc[0]  # the fixture's run (a later test may re-run the sweep)
    assert first.outcome == "done" and first.exit_status == 0 and first.ended_at >= first.started_at
    assert first.seconds == pytest.approx((first.ended_at - first.started_at).total_seconds())
    assert "orchestrator.sweep" in first.command and first.hosts == 1 and first.cluster_cpus > 0
    assert first.python_version == platform.python_version()
    for package in ("torch", "ray", "optuna", "pyarrow", "duckdb"):
        assert first[f"{package}_version"] == metadata.version(package)
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert first.git_commit == (git.stdout.strip() if git.returncode == 0 else None)
    assert runs.cell_id.isna().all() and store.files("runs") == sorted(store.path("runs", f"{r}.parquet")
                                                                         for r in runs.run_id)

    for cell_id, cell_trials in trials.groupby("cell_id"):
        path = store.path("optuna", f"{cell_id}.log")
        study = optuna.load_study(study_name=None, storage=JournalStorage(JournalFileBackend(path)))
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        done = cell_trials[cell_trials.status == "completed"]
        assert len(complete) == len(done) == len(study.trials)
        assert {t.user_attrs["trial_id"] for t in complete} == set(done.trial_id)
        by_id = done.set_index("trial_id")
        for t in complete:  # the two objectives, as the trials table has them
            row = by_id.loc[t.user_attrs["trial_id"]]
            assert t.values == pytest.approx([row.val_acc_pct, row.val_max_iou])


# What reaches a driver's console from Ray: forwarded worker / actor / raylet output ("(pid=..)",
# "(TrainController pid=..)", "(raylet)"), its loggers ("2026-.. INFO worker.py:.. --", "ray.*"), C++ logs
# ("[2026-.. E 123 456] core_worker.cc:.."), Train's and Tune's messages, colour codes, dedup notes.
RAY_LINE = re.compile(r"\x1b\[|\((raylet|autoscaler)\)|\(([\w.]+ )?pid=\d+|core_worker|\w\.cc:\d+|"
                      r"^\[?\d{4}-\d\d-\d\d[ T][\d:,.]+\s+(DEBUG|INFO|WARNING|ERROR|[DIWE] \d+)|^\s*\[?ray\.|"
                      r"INFO worker\.py|Wrote the latest version|Reporting training result|across cluster|"
                      r"^Traceback|^(Collecting|Installing|Successfully|Requirement already|Resolved|Installed) ")


def test_console_is_the_sweeps_own_lines(finished):
    """By default nothing of Ray's reaches the console (it stays in Ray's log files); the sources' epochs
    are the sweep's own lines, and the report is the last line."""
    _, proc = finished
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    assert [line for line in lines if RAY_LINE.search(line)] == []
    assert proc.stderr == ""
    assert re.search(r"^\[\s*\d+s\] \[mlp-digits-s0-\w+\] source epoch 6/6: ", proc.stdout, flags=re.M)
    assert re.fullmatch(r"\[\s*\d+s\] report: \S+index\.html", proc.stdout.splitlines()[-1])


def test_rerun_resumes_without_new_work(finished, tiny_spec):
    store, _ = finished
    before = {f: os.path.getmtime(f) for t in ("sources", "checkpoints", "trials", "generated", "baselines")
              for f in store.files(t)}
    proc = run_sweep(tiny_spec, Path(store.storage))
    after = {f: os.path.getmtime(f) for f in before}
    assert before == after  # nothing rewritten
    assert "sources: 2/2 already done" in proc.stdout and "trials: 6/6 already done" in proc.stdout
    assert not list(Path(store.path("_ray")).glob("source-*"))  # finished cells keep no checkpoints


def _readme_queries() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


def test_readme_duckdb_queries(finished):
    store, _ = finished
    queries = _readme_queries()
    assert len(queries) == 3
    con = connect(store)  # the README's DuckDB-from-Python way: a view per table
    results = [con.execute(q).df() for q in queries]

    best, top, plane = results
    assert set(best.arch) == {"mlp", "cnn_small"}
    trials = store.read_pandas("trials")
    for row in best.itertuples():
        cell = trials[trials.cell_id.str.startswith(f"{row.arch}-")]
        best_trial = cell.sort_values(["val_acc_pct", "val_max_iou", "trial_id"], ascending=[False, True, True]).iloc[0]
        assert row.pdiff_selected == pytest.approx(best_trial.selected_acc_pct)
    assert len(top) == 5 and top.val_acc_pct.is_monotonic_decreasing
    assert set(plane.method) == {"p-diff", "noise", "average", "gaussian"}
    generated = store.read_pandas("generated")
    assert plane.set_index("method").loc["p-diff", "mean_acc_pct"] == pytest.approx(100 * generated.test_acc.mean())


def _run_until(spec: Path, storage: Path, started) -> None:
    """Start the sweep and SIGKILL its process group (the driver and the local Ray it started) once
    `started()` holds."""
    proc = subprocess.Popen(sweep_command(spec, storage), cwd=ROOT, env=sweep_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not started():
            assert proc.poll() is None, "the sweep ended before the moment of the kill"
            assert time.monotonic() < deadline, "the moment of the kill never came"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_kills_in_stage_one_and_two_then_resume(tiny_spec, finished, tmp_path):
    """SIGKILL while the sources train, re-run and SIGKILL again once trials are being written, re-run:
    the sweep ends as an uninterrupted one, with no duplicate and no source trained twice after stage 1."""
    store = Store(str(tmp_path), "tiny")
    # Stage 1 has begun: a cell's Ray Train run exists (its rows come only after training and collection).
    _run_until(tiny_spec, tmp_path, lambda: list(Path(store.path("_ray")).glob("source-*")))
    assert len(store.files("sources")) < CELLS, "stage 1 finished before the kill: nothing was tested"
    assert not store.files("trials")

    _run_until(tiny_spec, tmp_path, lambda: store.files("trials"))  # stage 2 has begun writing
    sources_before = {f: os.path.getmtime(f) for f in store.files("sources")}
    assert len(sources_before) == CELLS
    assert len(store.files("trials")) < CELLS * TRIALS

    out = run_sweep(tiny_spec, tmp_path).stdout
    runs = store.read_pandas("runs").sort_values("started_at")
    # The killed runs never ended: each is marked abandoned by the run that found its lease stale, naming it.
    assert runs.outcome.tolist() == ["abandoned", "abandoned", "done"]
    assert runs.ended_at.isna().tolist() == [True, True, False]
    assert runs.run_id.iloc[1] in runs.error.iloc[0] and runs.run_id.iloc[2] in runs.error.iloc[1], runs.error.tolist()

    uninterrupted, _ = finished
    assert _keys(store) == _keys(uninterrupted)
    assert f"sources: {CELLS}/{CELLS} already done" in out
    assert {f: os.path.getmtime(f) for f in store.files("sources")} == sources_before  # not retrained
    assert not list(Path(store.path("_ray")).glob("source-*"))
    sources, trials = store.read_pandas("sources"), store.read_pandas("trials")
    checkpoints = store.read_pandas("checkpoints", columns=["cell_id", "index"])
    generated = store.read_pandas("generated", columns=["cell_id", "trial_id", "index"])
    assert sources.cell_id.is_unique and not checkpoints.duplicated().any()
    assert trials.trial_id.is_unique and not generated.duplicated().any()
    assert set(generated.trial_id) == set(trials.trial_id)


def test_fixed_knob_spec_runs_repeats_with_distinct_ids(tmp_path):
    """A spec that searches nothing runs `num_samples` repeats of its one configuration, each a trial of
    its own (own id, own seed, own files); the dry run says so."""
    import copy

    import yaml
    from tiny_sweep import TINY, run_sweep

    from orchestrator.stage2.trial import trial_id_of
    from orchestrator.store.tables import Store

    spec = copy.deepcopy(TINY)
    spec["name"] = "fixed"
    spec["sources"]["archs"] = ["mlp"]
    spec["pdiff"]["knobs"] |= {"latent_noise": 0.1, "latent_dim": 16}
    spec["pdiff"]["objective"] = ["accuracy"]
    spec["pdiff"]["num_samples"] = 2
    spec["pdiff"]["baselines"] = False
    path = tmp_path / "fixed.yaml"
    path.write_text(yaml.safe_dump(spec))
    dry = run_sweep(path, tmp_path / "results", "--dry-run")
    assert "2 repeat(s) per cell of one fixed configuration" in dry.stdout
    run_sweep(path, tmp_path / "results")
    store = Store(str(tmp_path / "results"), "fixed")
    trials = store.read_pandas("trials")
    assert len(trials) == 2 and trials.trial_id.is_unique and (trials.status == "completed").all()
    assert sorted(trials.trial_index) == [0, 1]
    generated = store.read_pandas("generated")
    assert len(generated) == 2 * N
    first, second = (generated[generated.trial_id == t].sort_values("index") for t in trials.trial_id)
    assert list(first.params.iloc[0]) != list(second.params.iloc[0])  # distinct seeds, distinct samples
    # Equal knob values with another index are another trial.
    knobs = {"latent_dim": 16}
    assert trial_id_of("c", knobs, 0) != trial_id_of("c", knobs, 1)
    assert trial_id_of("c", knobs, 0) == trial_id_of("c", dict(knobs), 0)
