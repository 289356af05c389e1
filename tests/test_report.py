"""`python -m orchestrator.report`: the report folder of a finished sweep, its numbers, its figures, in a browser."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import unavailable

from orchestrator.report import main
from orchestrator.results.captions import FIGURES
from orchestrator.results.figure_data import load_cells, trial_history
from orchestrator.results.search_figures import cell_importance, importance_figure, parallel_figure
from orchestrator.results.layout import BASELINES
from orchestrator.results.report import summary_table, write_report
from orchestrator.results.sections import ablation_tables
from orchestrator.results.summary import summary
from orchestrator.results.views import connect
from orchestrator.store.columns import RENAMED
from orchestrator.store.locate import parse_results_dir
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store
from pdiff.verdicts import comparison

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The report's figures (orchestrator.results.captions' registry) that a copy of the tables alone draws: the Pareto
# front needs the Optuna journal to know the search had two objectives (tests/test_report_figures.py draws it).
ALL_FIGURES = {name: words for name, words in FIGURES.items() if name != "pareto.png"}


# The report's command line (orchestrator.report.main, as `python -m orchestrator.report` runs it), then the
# modules it loaded that a report must not need: Ray and the stage modules (which build networks).
REPORT_CLI = """import sys
from orchestrator.report import main
status = main(sys.argv[1:])
print("loaded:", sorted(m for m in sys.modules if m.split(".")[0] == "ray"
                        or m.startswith(("orchestrator.stage1", "orchestrator.stage2", "orchestrator.runtime"))))
sys.exit(status)
"""


@pytest.fixture(scope="module")
def reported(finished_sweep, tmp_path_factory) -> tuple[Store, Path, subprocess.CompletedProcess, float]:
    """The report of a copy of the finished sweep's tables without its `models/` folder (the report needs
    the tables alone; the shared sweep stays untouched), by the command line, written to its default place,
    RESULTS_DIR/report."""
    copy = tmp_path_factory.mktemp("reported") / finished_sweep.sweep
    for part in TABLES:  # copy2 keeps modification times: the trials' completion order
        if os.path.isdir(finished_sweep.path(part)):
            shutil.copytree(finished_sweep.path(part), copy / part)
    assert not (copy / "models").exists()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", REPORT_CLI, str(copy)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return Store(str(copy.parent), copy.name), copy / "report", proc, seconds


def test_report_folder_and_console(reported):
    store, out, proc, seconds = reported
    assert {"index.html", "summary.md", "summary.csv"} <= {p.name for p in out.iterdir()}
    assert f"report: {out / 'index.html'}" in proc.stdout  # write_report's return value, printed
    for title in ("Test accuracy (%)", "Novelty, verdicts and comparisons", "Collapse", "Winning hyperparameters"):
        assert title in proc.stdout
    assert seconds < 120, f"the report took {seconds:.0f}s"


@pytest.mark.parametrize("name", list(ALL_FIGURES))
def test_figure_is_a_real_png(reported, name):
    import matplotlib.image

    _, out, _, _ = reported
    path = out / name
    assert path.is_file(), f"{name} missing"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1024, (name, len(data))
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert pixels[..., :3].std() > 0.01, f"{name} is blank"


def test_html_and_markdown_fetch_nothing_from_the_network(reported):
    _, out, _, _ = reported
    for name in ("index.html", "summary.md"):
        text = (out / name).read_text()
        lowered = text.lower()
        for needle in ("http://", "https://", "//cdn", "ftp://", "src=\"//", "href=\"//", "@import", "url("):
            assert needle not in lowered, f"{name} contains {needle!r}"
    html = (out / "index.html").read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    assert sorted(r for r in refs if r.endswith(".png")) == sorted(ALL_FIGURES)
    for ref in refs:  # every reference is a file beside the page
        assert "/" not in ref and ":" not in ref and (out / ref).is_file(), ref
    md = (out / "summary.md").read_text()
    assert all(f"]({name})" in md for name in ALL_FIGURES)


def _direct(con, sql: str, *params):
    return con.execute(sql, list(params)).fetchone()


def _close(a, b, tol) -> bool:
    if a is None or (isinstance(a, float) and math.isnan(a)):
        return b is None or (isinstance(b, float) and math.isnan(b))
    return abs(float(a) - float(b)) <= tol


def test_summary_equals_direct_duckdb_queries(reported):
    """Every number of the written summary against a plain DuckDB query over the tables."""
    store, out, _, _ = reported
    report = pd.read_csv(out / "summary.csv")
    con = connect(store)
    cells = con.execute("SELECT cell_id, arch, dataset, seed FROM sources ORDER BY arch, dataset, seed").fetchall()
    assert list(report.cell_id) == [c[0] for c in cells]  # one row per cell
    acc, iou = 0.005 + 1e-9, 0.0005 + 1e-9  # the summary rounds to 0.01 points and 0.001 IoU
    for row, (cell_id, arch, dataset, seed) in zip(report.itertuples(), cells):
        assert (row.arch, row.dataset, row.seed) == (arch, dataset, seed)
        best, mean = _direct(con, "SELECT 100 * max(test_acc), 100 * avg(test_acc) FROM checkpoints WHERE cell_id = ?",
                             cell_id)
        assert _close(row.original_best, best, acc) and _close(row.original_mean, mean, acc)

        trial = con.execute("""SELECT trial_id, val_acc_pct, selected_acc_pct, best_test_acc_pct, mean_acc_pct,
                                      median_acc_pct, test_max_iou
                               FROM trials WHERE cell_id = ? AND status = 'completed'
                               ORDER BY val_acc_pct DESC, val_max_iou ASC, trial_id LIMIT 1""", [cell_id]).fetchone()
        n_trials = _direct(con, "SELECT count(*) FROM trials WHERE cell_id = ? AND status = 'completed'", cell_id)[0]
        assert row.best_trial == trial[0] and row.trials == n_trials
        assert _close(row.pdiff_val, trial[1], acc)
        # The trial's numbers, and the same numbers from its own generated rows.
        gen = _direct(con, """SELECT 100 * first(test_acc ORDER BY val_acc DESC, "index"), 100 * max(test_acc),
                                     100 * avg(test_acc), 100 * quantile_disc(test_acc, 0.5), avg(test_max_iou)
                              FROM generated WHERE cell_id = ? AND trial_id = ?""", cell_id, trial[0])
        for column, from_trial, from_generated in zip(
                ["pdiff_selected", "pdiff_best_test_paper", "pdiff_mean", "pdiff_median", "pdiff_max_iou"],
                trial[2:], gen):
            tol = iou if column.endswith("iou") else acc
            assert _close(getattr(row, column), from_trial, tol), (column, getattr(row, column), from_trial)
            assert _close(from_trial, from_generated, 1e-3), (column, from_trial, from_generated)

        for b in BASELINES:
            sel, top, avg, med, max_iou = _direct(con, """
                SELECT 100 * first(test_acc ORDER BY val_acc DESC, "index"), 100 * max(test_acc), 100 * avg(test_acc),
                       100 * quantile_disc(test_acc, 0.5), avg(test_max_iou)
                FROM baselines WHERE cell_id = ? AND method = ?""", cell_id, b)
            assert _close(getattr(row, f"{b}_selected"), sel, acc)
            assert _close(getattr(row, f"{b}_best_test_paper"), top, acc)
            assert _close(getattr(row, f"{b}_mean"), avg, acc)
            assert _close(getattr(row, f"{b}_median"), med, acc)
            assert _close(getattr(row, f"{b}_max_iou"), max_iou, iou)
            # p-diff against the baseline: the val-selected trial's stored comparison, worded from its intervals.
            stored = _direct(con, f"""SELECT vs_{b}, vs_{b}_acc_lo, vs_{b}_acc_hi, vs_{b}_iou_lo, vs_{b}_iou_hi
                                       FROM trials WHERE cell_id = ? AND trial_id = ?""", cell_id, trial[0])
            assert stored[0] is not None and getattr(row, f"vs_{b}") == stored[0] == comparison(*stored[1:])
            assert stored[1] <= stored[2] and stored[3] <= stored[4]

        # Collapse signals: the trial's own row, the snapshots' (sources), each baseline family's.
        signals = _direct(con, """SELECT pairwise_iou, distinct_sets, spread_ratio, collapsed, ae_converged
                                  FROM trials WHERE cell_id = ? AND trial_id = ?""", cell_id, trial[0])
        assert signals[0] is not None, "the tiny sweep's trials carry no collapse signals"
        assert _close(row.pdiff_pairwise_iou, signals[0], iou) and row.pdiff_distinct_sets == signals[1]
        assert _close(row.pdiff_spread_ratio, signals[2], iou)
        assert bool(row.pdiff_collapsed) == signals[3] and bool(row.ae_converged) == signals[4]
        assert row.collapsed_trials == _direct(con, "SELECT count(*) FROM trials WHERE cell_id = ? AND "
                                               "status = 'completed' AND collapsed", cell_id)[0]
        snap = _direct(con, "SELECT snapshot_pairwise_iou, snapshot_distinct_sets FROM sources WHERE cell_id = ?",
                       cell_id)
        assert _close(row.snapshot_pairwise_iou, snap[0], iou) and row.snapshot_distinct_sets == snap[1]
        for b in BASELINES:
            fam = _direct(con, """SELECT min(family_pairwise_iou), max(family_pairwise_iou),
                                         any_value(family_distinct_sets), any_value(family_spread_ratio),
                                         bool_or(family_collapsed)
                                  FROM baselines WHERE cell_id = ? AND method = ?""", cell_id, b)
            assert fam[0] == fam[1], f"{b}: one family, one pairwise IoU on every row"
            assert _close(getattr(row, f"{b}_pairwise_iou"), fam[0], iou)
            assert getattr(row, f"{b}_distinct_sets") == fam[2]
            assert _close(getattr(row, f"{b}_spread_ratio"), fam[3], iou)
            assert bool(getattr(row, f"{b}_collapsed")) == fam[4]

        knobs = [c for c in report.columns if c.startswith("hp_")]
        assert knobs, "no hyperparameter columns"
        values = con.execute("SELECT " + ", ".join(f'"{k[3:]}"' for k in knobs)
                             + " FROM trials WHERE cell_id = ? AND trial_id = ?", [cell_id, trial[0]]).fetchone()
        for k, v in zip(knobs, values):
            shown = getattr(row, k)
            if isinstance(v, (int, float)):
                assert _close(shown, v, 1e-4 * max(1.0, abs(v))), (k, shown, v)
            else:
                assert str(shown).replace(" ", "") == str(v).replace(" ", ""), (k, shown, v)


def test_summary_extends_summary_sql(finished_sweep):
    """The report's table holds summary_sql()'s row per cell; only the baselines' val-selected numbers are
    re-derived with a deterministic tie rule."""
    base = summary(finished_sweep).set_index("cell_id")
    ours, searched, shown = summary_table(finished_sweep)
    ours = ours.set_index("cell_id")
    assert list(ours.index) == list(base.index)
    for column in base.columns:
        assert column in ours.columns
        if column.endswith("_selected") and column != "pdiff_selected":
            continue
        pd.testing.assert_series_equal(ours[column], base[column], check_dtype=False)
    assert set(searched) <= set(shown)
    assert "latent_noise" in searched  # searched by the tiny sweep, on a continuous range


def test_report_needs_no_ray_and_no_stage_module(reported):
    """The report was drawn in a process that never imported Ray or a stage module (orchestrator.stage1.collection and
    orchestrator.stage2.search build networks; orchestrator.runtime.cluster starts Ray)."""
    _, _, proc, _ = reported
    assert "loaded: []" in proc.stdout.splitlines(), proc.stdout[-2000:]


def _rescored(store: Store, cell_id: str, trial_id: str) -> dict:
    """The figures' numbers as they were computed before the tables held the wrong-prediction sets: the
    cell's source network rebuilt from `models/`, every snapshot and the best trial's models scored again."""
    import torch

    from orchestrator.stage1.cells import load_source_model
    from pdiff import ParameterSubset, load_dataset
    from pdiff.evaluate import BatchedEvaluator, iou_matrix

    src = store.read_pandas("sources", cell_id).iloc[0]
    data = load_dataset(src.dataset, seed=int(src.seed))
    model = load_source_model(store, src.arch, src.model_path, data)
    evaluator = BatchedEvaluator(model, ParameterSubset.select(model, list(src.subset)))
    snaps = store.read_pandas("checkpoints", cell_id).sort_values("index")
    gen = store.read_pandas("generated", cell_id)
    gen = gen[gen.trial_id == trial_id].sort_values("index")
    snap = evaluator.score(torch.tensor(np.stack(snaps.params.to_numpy())), data)
    new = evaluator.score(torch.tensor(np.stack(gen.params.to_numpy())), data)
    oo, gg = iou_matrix(snap.test_wrong, snap.test_wrong), iou_matrix(new.test_wrong, new.test_wrong)
    off_k, off_n = ~torch.eye(len(oo), dtype=torch.bool), ~torch.eye(len(gg), dtype=torch.bool)
    return {"similarity": {"original-original": float(oo[off_k].mean()), "generated-generated": float(gg[off_n].mean()),
                           "original-generated": float(iou_matrix(new.test_wrong, snap.test_wrong).mean())},
            "snapshot_max_iou": oo.masked_fill(~off_k, -1.0).max(1).values.numpy(),
            "snapshot_wrong": snap.test_wrong, "generated_wrong": new.test_wrong}


def test_figures_from_the_tables_alone_have_the_numbers_of_rescoring(finished_sweep, reported):
    """With `models/` deleted, the figures' numbers (similarity bars, the snapshots' max IoU, the accuracies)
    come from the stored wrong-prediction sets, and are identical to rescoring every model with the source
    network (the original sweep, which still has its models)."""
    from pdiff.evaluate import unpack_wrong_rows

    copy, out, _, _ = reported
    assert not os.path.exists(copy.path("models"))
    ours, _, _ = summary_table(copy)
    cells = load_cells(copy, dict(zip(ours.cell_id, ours.best_trial)))
    assert len(cells) == len(ours) == 2
    n_test = copy.read_pandas("sources").set_index("cell_id").n_test
    for cell in cells:
        assert cell.why_not is None, cell.why_not
        expected = _rescored(finished_sweep, cell.cell_id, cell.best_trial)
        assert cell.similarity == expected["similarity"]  # exactly: the same sets give the same floats
        np.testing.assert_array_equal(cell.snapshot_max_iou, expected["snapshot_max_iou"])
        stored = copy.read_pandas("checkpoints", cell.cell_id).sort_values("index").test_wrong
        assert (unpack_wrong_rows(stored, int(n_test[cell.cell_id])) == expected["snapshot_wrong"]).all()
        assert (unpack_wrong_rows(cell.best_generated.test_wrong, int(n_test[cell.cell_id]))
                == expected["generated_wrong"]).all()
        # The accuracies the sets imply are the stored ones, for every group drawn.
        np.testing.assert_allclose(cell.recomputed["original"], cell.snapshot_rows.test_acc, atol=1e-6)
        np.testing.assert_allclose(cell.recomputed["p-diff"], cell.best_generated.test_acc, atol=1e-6)
        for method in BASELINES:
            rows = cell.baselines[cell.baselines.method == method].sort_values("index")
            np.testing.assert_allclose(cell.recomputed[method], rows.test_acc, atol=1e-6)
        assert cell.snapshot_max_iou.shape == (len(cell.snapshots),)
    md = (out / "summary.md").read_text()
    assert "similarity not computed" not in md and "differs from the stored" not in md


def test_trial_history_orders_every_trial(finished_sweep):
    trials, how = trial_history(finished_sweep)
    assert how
    assert len(trials) == finished_sweep.read("trials", columns=["trial_id"]).num_rows
    for _, t in trials.groupby("cell_id"):
        assert list(t.order) == list(range(1, len(t) + 1))


def test_importance_is_computed_or_explained(tmp_path):
    knobs = ["latent_dim", "latent_noise", "sampler"]
    rng = np.random.default_rng(0)
    rows = [{"cell_id": "c", "status": "completed", "latent_dim": int(d), "latent_noise": float(n), "sampler": s,
             "val_acc_pct": 90 + 5 * float(n) + 0.01 * int(d)}
            for d, n, s in zip(rng.choice([16, 32], 8), rng.uniform(0.01, 0.3, 8), ["ddim", "ddpm"] * 4)]
    importances, why = cell_importance(pd.DataFrame(rows), knobs)
    assert why is None and set(importances) == set(knobs)
    assert sum(importances.values()) == pytest.approx(1.0)

    one = cell_importance(pd.DataFrame(rows[:1]), knobs)
    assert one[0] is None and "at least 2" in one[1]
    flat = cell_importance(pd.DataFrame([r | {"val_acc_pct": 97.0} for r in rows]), knobs)
    assert flat[0] is None and "same val accuracy" in flat[1]
    fixed = cell_importance(pd.DataFrame([r | {"latent_dim": 16, "latent_noise": 0.1, "sampler": "ddim"}
                                          for r in rows]), knobs)
    assert fixed[0] is None and "no knob varies" in fixed[1]

    # Drawn: bars for a cell with importances, a message for one without.
    trials = pd.DataFrame(rows + [r | {"cell_id": "d"} for r in rows[:1]])
    labels = {"c": "mlp / digits / seed 0", "d": "cnn_small / digits / seed 0"}
    for draw, name in ((importance_figure, "importance.png"), (parallel_figure, "parallel_coordinates.png")):
        path = draw(trials, knobs, labels, tmp_path / name)
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 1024


def test_report_of_a_sweep_on_an_object_store(finished_sweep):
    """A sweep on an object store (pyarrow's in-memory `mock://`): built locally, copied to <sweep>/report/."""
    import pyarrow.fs as pafs

    remote = Store("mock:///bucket/results", finished_sweep.sweep)
    cell = sorted(finished_sweep.read("sources", columns=["cell_id"]).column("cell_id").to_pylist())[0]
    for table in TABLES:  # one cell is enough to take every branch
        for f in finished_sweep.files(table, cell):
            remote.write_bytes(f[len(finished_sweep.root) + 1:], Path(f).read_bytes())

    index = write_report(remote)
    assert index.name == "index.html" and index.is_file()
    listing = remote.fs.get_file_info(pafs.FileSelector(remote.path("report")))
    assert {i.base_name for i in listing} >= {"index.html", "summary.md", "summary.csv", *ALL_FIGURES}
    assert remote.read_bytes("report/index.html") == index.read_bytes()
    shutil.rmtree(index.parent)


def _as_schema(store: Store, version: int) -> None:
    """Rewrite every table file of `store` as if an older release (schema `version`) had written it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for table in TABLES:
        for f in store.files(table):
            t = pq.read_table(f)
            i = t.schema.get_field_index("schema_version")
            pq.write_table(t.set_column(i, "schema_version", pa.array([version] * len(t), pa.int32())), f)


def test_tables_of_an_older_schema_are_refused_in_one_line(finished_sweep, tiny_spec, tmp_path, capsys):
    """A sweep folder of schema 1 (before the wrong-prediction sets and the max-IoU names): the report, the
    query, the summary and the sweep command each refuse it with one line naming the folder and what to do;
    the sweep command refuses before any work and writes nothing."""
    import json

    from tiny_sweep import sweep_command, sweep_env

    from orchestrator.query import main as query_main
    from orchestrator.store.schema import SCHEMA_VERSION
    from orchestrator.store.errors import OldTables
    from orchestrator.store.ownership import MARKER

    assert SCHEMA_VERSION == 2
    copy = _copy_sweep(finished_sweep, tmp_path / "results")
    _as_schema(copy, 1)
    assert copy.schema_versions() == {1}

    for run in (lambda: main([copy.root]), lambda: query_main([copy.root, "SELECT count(*) FROM trials"])):
        assert run() == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        assert copy.root in err and "schema version 1" in err and "version 2" in err, err
        assert "delete" in err and "yourself" in err  # no marker: --restart would not delete this folder
    with pytest.raises(OldTables):
        summary(copy)

    (Path(copy.root) / MARKER).write_text(json.dumps({"tool": "pdiff-sweep", "sweep": copy.sweep,
                                                        "spec_hash": "x", "created": "then"}))
    with pytest.raises(OldTables) as info:
        copy.check_schema()
    assert "--restart" in str(info.value) and "deletes only this sweep's folder" in str(info.value)
    before = sorted(str(p.relative_to(copy.root)) for p in Path(copy.root).rglob("*"))
    proc = subprocess.run(sweep_command(tiny_spec, Path(copy.storage)), cwd=ROOT, env=sweep_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and copy.root in proc.stderr and "--restart" in proc.stderr, proc.stderr
    assert "stage 1" in proc.stdout and not re.search(r"^\[\s*\d+s\]", proc.stdout, flags=re.M)  # the plan, no progress
    assert sorted(str(p.relative_to(copy.root)) for p in Path(copy.root).rglob("*")) == before  # nothing written

    _as_schema(copy, SCHEMA_VERSION)  # the same folder at today's version reads again
    assert len(summary(copy)) == 2


def test_report_shows_loss_curves_and_runs(reported):
    """The loss-curve figure and the Runs table (orchestrator.results.sections) in index.html and summary.md; no noise
    ablation, since the tiny sweep does not grid input_noise x latent_noise."""
    from importlib import metadata

    store, out, _, _ = reported
    html, md = (out / "index.html").read_text(), (out / "summary.md").read_text()
    assert '<img src="loss_curves.png"' in html and "](loss_curves.png)" in md
    assert "<h2>Runs</h2>" in html and "## Runs" in md
    runs = store.read_pandas("runs")
    assert len(runs) >= 1
    for run_id in runs.run_id:
        assert f"<td>{run_id}</td>" in html and f"| {run_id} |" in md
    assert f"<td>{metadata.version('torch')}</td>" in html and "<td>done (0)</td>" in html
    assert "Noise ablation" not in html and "Noise ablation" not in md


def _grid_trials(cell: str, rows: list[tuple[float, float, float, float]], **extra) -> list[dict]:
    return [{"cell_id": cell, "trial_id": f"{cell}{i}", "status": "completed", "input_noise": a, "latent_noise": b,
             "selected_acc_pct": acc, "test_max_iou": iou, "val_acc_pct": 90.0} | extra
            for i, (a, b, acc, iou) in enumerate(rows)]


def test_noise_ablation_table_of_a_grid():
    """Rows input noise, columns latent noise, the val-selected test accuracy and the mean max-IoU; only for a
    cell whose trials grid both knobs (not one knob, not continuous draws of both)."""
    import duckdb

    grid = [(a, b, 90 + 10 * a + b, 0.5 + b / 10) for a in (0.0, 0.001, 0.01) for b in (0.0, 0.01, 0.1, 1.0)]
    repeat = [(0.001, 0.1, 80.0, 0.7)]  # a second trial at one point: the entry is the mean of two
    rows = (_grid_trials("grid", grid + repeat) + _grid_trials("grid", [(0.0, 0.0, 10.0, 1.0)], status="failed")
            + _grid_trials("one", [(0.001, b, 90.0, 0.5) for b in (0.0, 0.1, 1.0)])
            + _grid_trials("drawn", [(a, b, 90.0, 0.5) for a, b in np.random.default_rng(0).uniform(0, 1, (6, 2))]))
    con = duckdb.connect()
    con.register("trials", pd.DataFrame(rows))
    labels = {"grid": "mlp / digits / seed 0", "one": "mlp / digits / seed 1", "drawn": "mlp / digits / seed 2"}
    tables = ablation_tables(con, labels)
    assert list(tables) == ["grid"]
    table = tables["grid"]
    assert list(table.index) == ["0", "0.001", "0.01"] and list(table.columns) == ["0", "0.01", "0.1", "1"]
    assert table.loc["0", "0"] == "90.00 (0.500)"  # the failed trial at (0, 0) is left out
    assert table.loc["0.01", "1"] == f"{90 + 0.1 + 1:.2f} ({0.5 + 0.1:.3f})"
    mean_acc, mean_iou = (90 + 0.01 + 0.1 + 80) / 2, (0.5 + 0.01 + 0.7) / 2
    assert table.loc["0.001", "0.1"] == f"{mean_acc:.2f} ({mean_iou:.3f}) x2"


def test_report_draws_the_noise_ablation_of_a_grid(finished_sweep, tmp_path):
    """A copy of the tiny sweep whose trials are made to grid input x latent noise (3 of 4 points per cell):
    the report shows the paper's ablation table per cell, in HTML and Markdown, from the trials' own numbers."""
    import pyarrow.parquet as pq

    copy = _copy_sweep(finished_sweep, tmp_path / "results")
    points = [(0.0, 0.01), (0.0, 0.1), (0.001, 0.01)]
    expected = {}
    for cell in sorted(copy.read_pandas("sources").cell_id):
        for f, (a, b) in zip(copy.files("trials", cell), points):
            [row] = pq.read_table(f).to_pylist()
            Store(copy.storage, copy.sweep, row["spec_hash"]).write(
                "trials", cell, row["trial_id"], [row | {"input_noise": a, "latent_noise": b}])
            expected[cell, a, b] = f"{row['selected_acc_pct']:.2f} ({row['test_max_iou']:.3f})"
    index = write_report(copy, tmp_path / "report")
    html, md = index.read_text(), (index.parent / "summary.md").read_text()
    assert "<h3>Noise ablation" in html and "## Noise ablation" in md
    for (cell, a, b), entry in expected.items():
        assert f"<td>{entry}</td>" in html and f" {entry} |" in md
    assert md.count("| input noise \\ latent noise | 0.01 | 0.1 |") == 2
    for cell in {c for c, _, _ in expected}:  # the rows: input noise, then its entry per latent noise
        assert f"| 0 | {expected[cell, 0.0, 0.01]} | {expected[cell, 0.0, 0.1]} |" in md
        assert f"| 0.001 | {expected[cell, 0.001, 0.01]} | - |" in md
    assert html.count("<td>-</td>") == 2  # (0.001, 0.1): not measured, in each cell's table


def test_results_dir_parsing(tmp_path):
    s = parse_results_dir("results/smoke/")
    assert (s.storage, s.sweep) == (str(Path("results").absolute()), "smoke")
    s = parse_results_dir("s3://bucket/prefix/smoke")
    assert (s.storage, s.sweep) == ("s3://bucket/prefix", "smoke")
    assert main([str(tmp_path / "nothing")]) == 2


# -- damaged files and failed trials ------------------------------------------------------------


def _copy_sweep(store: Store, where: Path) -> Store:
    """A copy of the sweep (tables and source models); copy2 keeps the trials' modification times."""
    for part in [*TABLES, "models"]:
        if os.path.isdir(store.path(part)):
            shutil.copytree(store.path(part), where / store.sweep / part)
    return Store(str(where), store.sweep)


def test_report_of_a_truncated_file_is_one_line_naming_it(finished_sweep, tmp_path):
    copy = _copy_sweep(finished_sweep, tmp_path / "results")
    bad = Path(copy.files("generated")[-1])
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    proc = subprocess.run([sys.executable, "-m", "orchestrator.report", copy.root, "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_failed_trials_are_left_out_and_counted(finished_sweep, tmp_path):
    """A failed trial (status 'failed', a reason, NaN metrics, NaN vectors) changes no number and no figure's
    input; the summary counts it and a note gives its reason."""
    copy = _copy_sweep(finished_sweep, tmp_path / "results")
    before, _, _ = summary_table(copy)
    cell = before.cell_id.iloc[0]
    nan = float("nan")
    # Written as the failing trial would be: the cell's own spec hash, the knobs it tried.
    spec_hash = copy.read_pandas("trials", cell).spec_hash.iloc[0]
    failed = Store(copy.storage, copy.sweep, spec_hash)
    failed.write("trials", cell, "tfailed", [{
        "trial_id": "tfailed", "search_hash": "x", "status": "failed", "reason": "ae_loss is nan at step 7",
        "val_acc_pct": nan, "selected_acc_pct": nan, "best_test_acc_pct": nan, "mean_acc_pct": nan,
        "median_acc_pct": nan,
        "test_max_iou": nan, "val_max_iou": nan, "ae_loss": nan, "ldm_loss": nan, "latent_noise": 30.0,
        "latent_dim": 16}])
    width = len(copy.read_pandas("generated", cell).params.iloc[0])
    failed.write("generated", cell, "tfailed", [
        {"trial_id": "tfailed", "index": i, "val_acc": nan, "test_acc": nan, "test_max_iou": nan,
         "val_max_iou": nan, "nearest_l2": nan, "params": [nan] * width} for i in range(4)])

    after, _, _ = summary_table(copy)
    assert list(after.failed_trials) == [1 if c == cell else 0 for c in after.cell_id]
    assert list(before.failed_trials) == [0] * len(before)
    pd.testing.assert_frame_equal(after.drop(columns=["failed_trials"]), before.drop(columns=["failed_trials"]))
    assert summary(copy).set_index("cell_id").failed_trials[cell] == 1

    cells = load_cells(copy, dict(zip(after.cell_id, after.best_trial)), predictions=False)
    assert all("tfailed" not in set(c.generated.trial_id) for c in cells)

    index = write_report(copy, tmp_path / "report")
    md = (index.parent / "summary.md").read_text()
    assert "1 failed trial(s)" in md and "ae_loss is nan at step 7" in md
    assert pd.read_csv(index.parent / "summary.csv").failed_trials.tolist() == after.failed_trials.tolist()
    for name in ALL_FIGURES:
        assert (index.parent / name).read_bytes()[:8] == PNG_SIGNATURE, name


# -- collapse -------------------------------------------------------------------------------------


def _rewrite_trial(store: Store, cell_id: str, trial_id: str, vectors) -> dict:
    """Replace a trial's generated models by `vectors` and write its `generated` and `trials` rows as stage 2
    would have for them: scored with the cell's source network, collapse signals from
    pdiff.evaluate.family_stats (through pdiff.pipeline.assess). Its val accuracy is then raised above every
    other trial's of the cell, so that it is the val-selected one. Returns the assessment's summary."""
    import torch

    from orchestrator.stage1.cells import load_source_model
    from pdiff import ParameterSubset, load_dataset
    from pdiff.evaluate import BatchedEvaluator, pack_wrong
    from pdiff.pipeline import assess

    src = store.read_pandas("sources", cell_id).iloc[0]
    data = load_dataset(src.dataset, seed=int(src.seed))
    model = load_source_model(store, src.arch, src.model_path, data)
    evaluator = BatchedEvaluator(model, ParameterSubset.select(model, list(src.subset)))
    snaps = store.read_pandas("checkpoints", cell_id).sort_values("index")
    snapshots = torch.tensor(np.stack(snaps.params.to_numpy()), dtype=torch.float32)
    a = assess(evaluator, data, vectors, snapshots, evaluator.score(snapshots, data))
    s = a.scores
    trials = store.read_pandas("trials", cell_id)
    old = next(r for r in store.read("trials", cell_id).to_pylist() if r["trial_id"] == trial_id)
    writer = Store(store.storage, store.sweep, old["spec_hash"])
    writer.write("generated", cell_id, trial_id, [
        {"trial_id": trial_id, "index": i, "val_acc": float(s.val_acc[i]), "test_acc": float(s.test_acc[i]),
         "test_max_iou": float(a.test_max_iou[i]), "val_max_iou": float(a.val_max_iou[i]),
         "nearest_l2": float(a.nearest_l2[i]), "val_wrong": pack_wrong(s.val_wrong[i]),
         "test_wrong": pack_wrong(s.test_wrong[i]), "params": vectors[i].tolist()} for i in range(len(vectors))])
    best_other = trials[(trials.trial_id != trial_id) & (trials.status == "completed")].val_acc_pct.max()
    stored = {RENAMED["trials"].get(k, k): v for k, v in a.summary.items()}  # percents under their `_pct` names
    row = old | stored | {"val_acc_pct": max(100 * float(s.val_acc.max()), float(best_other) + 0.01)}
    writer.write("trials", cell_id, trial_id, [row])
    return a.summary


def _section(text: str, start: str, end: str) -> str:
    return text[text.index(start):text.index(end, text.index(start))]


def test_a_collapsed_best_trial_is_flagged_everywhere(finished_sweep, tmp_path, capsys):
    """One cell's val-selected trial made collapsed (its N generated vectors one vector), another's made
    diverse (N different snapshots): the summary, the sweep's console summary, summary.md, index.html and
    the figures' data flag the first and only the first."""
    from types import SimpleNamespace

    import torch

    from orchestrator.results.trust import collapse_warnings
    from orchestrator.sweep import _print_summary
    from pdiff.evaluate import COLLAPSE_IOU, COLLAPSE_SPREAD

    copy = _copy_sweep(finished_sweep, tmp_path / "results")
    before, _, _ = summary_table(copy)
    forced, other = before.cell_id.iloc[0], before.cell_id.iloc[1]
    trials = dict(zip(before.cell_id, before.best_trial))

    gen = copy.read_pandas("generated", forced)
    gen = gen[gen.trial_id == trials[forced]].sort_values("index")
    one = torch.tensor(np.asarray(gen.params.iloc[0]), dtype=torch.float32)
    copies = one.repeat(len(gen), 1)  # N identical vectors: one model
    stats = _rewrite_trial(copy, forced, trials[forced], copies)
    assert stats["collapsed"] and stats["pairwise_iou"] >= COLLAPSE_IOU and stats["distinct_sets"] == 1
    assert stats["spread_ratio"] < COLLAPSE_SPREAD

    snaps = copy.read_pandas("checkpoints", other).sort_values("index")
    pick = np.linspace(0, len(snaps) - 1, len(gen)).round().astype(int)  # N different snapshots, spread out
    spread_out = torch.tensor(np.stack(snaps.params.to_numpy()[pick]), dtype=torch.float32)
    stats = _rewrite_trial(copy, other, trials[other], spread_out)
    assert not stats["collapsed"], stats  # the precondition: a family of different models

    df, _, _ = summary_table(copy)
    assert list(df.best_trial) == list(before.best_trial)  # the rewritten trials are the val-selected ones
    flags = dict(zip(df.cell_id, df.pdiff_collapsed))
    assert flags[forced] and not flags[other], flags
    row = df.set_index("cell_id").loc[forced]
    assert row.pdiff_pairwise_iou == 1.0 and row.pdiff_distinct_sets == 1 and row.pdiff_spread_ratio < 0.05
    base = summary(copy).set_index("cell_id")  # summary_sql(), what the sweep prints, says the same
    assert bool(base.pdiff_collapsed[forced]) and not bool(base.pdiff_collapsed[other])
    assert base.collapsed_trials[forced] >= 1
    warnings = collapse_warnings(df)
    labels = {r.cell_id: f"{r.arch} / {r.dataset} / seed {r.seed}" for r in df.itertuples()}
    assert len(warnings) == 1 and warnings[0].startswith(labels[forced]) and "COLLAPSED" in warnings[0]

    # The console summary the sweep prints (make demo): p-diff's pairwise IoU and novelty beside the snapshots'
    # pairwise IoU, a COLLAPSED marker on the forced cell's row and a line saying so, for that cell only.
    _print_summary(SimpleNamespace(cells=[SimpleNamespace(cell_id=c) for c in df.cell_id]), copy)
    out = capsys.readouterr().out
    assert "original_best" in out and "pdiff_selected" in out
    header = next(line for line in out.splitlines() if "pdiff_pair_iou" in line).split()
    assert {"snap_pair_iou", "pdiff_max_iou", "collapse"} <= set(header)
    rows = {" / ".join(line.split()[:2]) + f" / seed {line.split()[2]}": line.split()
            for line in out.splitlines() if line.split()[:1] in ([a] for a in df.arch) and "of" in line.split()}
    assert rows[labels[forced]][header.index("collapse")] == "COLLAPSED"
    assert rows[labels[other]][header.index("collapse")] == "-"
    assert rows[labels[forced]][header.index("pdiff_pair_iou")] == "1.000"
    assert f"cell {labels[forced]}: best trial COLLAPSED (pairwise IoU 1.000, 1 distinct" in out
    assert f"cell {labels[other]}: best trial COLLAPSED" not in out

    index = write_report(copy, tmp_path / "report")
    md = (index.parent / "summary.md").read_text()
    assert f"> **COLLAPSED**: {labels[forced]}: the val-selected trial {trials[forced]} is COLLAPSED" in md
    assert f"**COLLAPSED**: {labels[other]}" not in md
    table = [line.split(" | ") for line in _section(md, "## Collapse", "## Winning").splitlines()
             if line.startswith("| ")]
    column = [c.strip(" |") for c in table[0]].index("pdiff collapse")
    shown = {f"{r[0].strip('| ')} / {r[1]} / seed {r[2]}": r[column].strip(" |") for r in table[1:]}
    assert shown == {labels[forced]: "COLLAPSED", labels[other]: "ok"}, shown

    html = index.read_text()
    warned = re.findall(r'<p class="warning">(.*?)</p>', html, flags=re.S)
    assert len(warned) == 1 and labels[forced] in warned[0] and labels[other] not in warned[0]
    body = _section(html, "<h3>Collapse</h3>", "</table>")
    rows = re.findall(r"<tr><td>(.*?)</tr>", body, flags=re.S)
    assert len(rows) == 2
    for cell_id, tr in zip(df.cell_id, rows):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", "<td>" + tr)
        # arch, dataset, seed | snapshots: IoU, sets, flag | p-diff: IoU, sets, spread, flag
        pdiff_flag = cells[3 + 3 + 3]
        assert pdiff_flag == ("COLLAPSED" if cell_id == forced else "ok"), (cell_id, cells)
    forced_row = rows[list(df.cell_id).index(forced)]
    assert '<td class="collapsed">COLLAPSED</td>' in forced_row  # shown in red
    assert pd.read_csv(index.parent / "summary.csv").set_index("cell_id").pdiff_collapsed.to_dict() == {
        forced: True, other: False}

    # The figures are drawn from the same flags.
    cells = {c.cell_id: c for c in load_cells(copy, trials, predictions=False)}
    assert cells[forced].collapsed("p-diff") and not cells[other].collapsed("p-diff")
    assert trials[forced] in cells[forced].collapsed_trials and trials[other] not in cells[other].collapsed_trials


def test_accuracy_novelty_figure_moves_no_point_and_labels_collapse(tmp_path, monkeypatch):
    """Every drawn point is a model's own (max IoU, accuracy): no jitter, nothing past IoU 1.0; a collapsed
    family (8 identical models at IoU 1.0) is labelled 'collapsed' and a healthy one is not."""
    import orchestrator.results.canvas as canvas
    import orchestrator.results.figures as figures
    from orchestrator.results.figure_data import CellData

    drawn = []
    save = canvas.save
    monkeypatch.setattr(canvas, "save", lambda fig, path: (drawn.append(fig), save(fig, path))[1])
    rng = np.random.default_rng(0)
    snap_iou, snap_acc = rng.uniform(0.6, 0.9, 12), rng.uniform(0.9, 0.95, 12)
    generated = pd.DataFrame({"trial_id": "t", "index": range(8), "val_acc": 0.9, "test_acc": 0.93,
                              "test_max_iou": 1.0, "params": [np.zeros(3)] * 8})
    baselines = pd.DataFrame({"method": "noise", "index": range(8), "val_acc": 0.9,
                              "test_acc": rng.uniform(0.9, 0.95, 8), "test_max_iou": rng.uniform(0.7, 1.0, 8),
                              "params": [np.zeros(3)] * 8})
    cell = CellData(cell_id="c", arch="mlp", dataset="digits", seed=0, best_trial="t",
                    snapshots=np.zeros((12, 3), np.float32),
                    snapshot_rows=pd.DataFrame({"index": range(12), "test_acc": snap_acc}),
                    generated=generated, baselines=baselines, snapshot_max_iou=snap_iou,
                    families={"p-diff": {"pairwise_iou": 1.0, "distinct_sets": 1, "spread_ratio": 0.0,
                                         "collapsed": True},
                              "noise": {"pairwise_iou": 0.6, "distinct_sets": 8, "spread_ratio": 1.5,
                                        "collapsed": False}})
    figures.accuracy_novelty_figure([cell], tmp_path / "accuracy_novelty.png")
    ax = drawn[0].axes[0]
    truth = {(round(x, 9), round(100 * y, 9)) for x, y in zip(snap_iou, snap_acc)}
    truth |= {(1.0, 93.0)} | {(round(x, 9), round(100 * y, 9))
                              for x, y in zip(baselines.test_max_iou, baselines.test_acc)}
    means = set()
    for coll in ax.collections:
        for x, y in coll.get_offsets():
            assert x <= 1.0, f"a point past IoU 1.0: {x}"
            means.add((round(float(x), 9), round(float(y), 9)))
    assert truth <= means  # every model is drawn at its own place
    extra = means - truth  # the rest are the families' means
    assert len(extra) <= 3, extra
    texts = [t.get_text() for t in ax.texts]
    assert "p-diff collapsed" in texts and not any(t.startswith("noise") for t in texts), texts
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "p-diff (8 models at 1 point): COLLAPSED" in legend and "noise" in legend, legend


def test_old_tables_without_collapse_columns_still_summarise(finished_sweep, tmp_path):
    """A sweep written before the collapse columns: its signals read as NULL (shown n/a), not an error."""
    import pyarrow.parquet as pq

    from orchestrator.results.console import summary_text
    from orchestrator.results.views import COLLAPSE_COLUMNS

    copy = _copy_sweep(finished_sweep, tmp_path / "results")
    for table, columns in COLLAPSE_COLUMNS.items():
        for f in copy.files(table):
            t = pq.read_table(f)
            pq.write_table(t.drop_columns([c for c in columns if c in t.column_names]), f)
    df = summary(copy)
    assert len(df) == 2 and df.pdiff_selected.notna().all()
    assert df.pdiff_pairwise_iou.isna().all() and df.pdiff_collapsed.isna().all()
    ours, _, shown = summary_table(copy)
    text = summary_text(ours, shown)
    assert "Collapse" in text and "COLLAPSED" not in text and "n/a" in text
    cells = load_cells(copy, dict(zip(ours.cell_id, ours.best_trial)), predictions=False)
    assert all(not c.families and not c.collapsed("p-diff") for c in cells)
    trials, how = trial_history(copy)
    from orchestrator.results.figures import accuracy_novelty_figure
    from orchestrator.results.search_figures import history_figure

    labels = {c.cell_id: c.label for c in cells}
    assert history_figure(trials, how, labels, tmp_path / "search_history.png").read_bytes()[:8] == PNG_SIGNATURE
    assert accuracy_novelty_figure(cells, tmp_path / "accuracy_novelty.png").read_bytes()[:8] == PNG_SIGNATURE


def test_tsne_skips_non_finite_vectors(tmp_path):
    import matplotlib.image

    from orchestrator.results.figure_data import CellData
    from orchestrator.results.figures import tsne_figure

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 6)).astype(np.float32)
    generated = [{"trial_id": "t", "index": i, "val_acc": 0.9, "test_acc": 0.9, "test_max_iou": 0.5,
                  "params": v} for i, v in enumerate(rng.normal(size=(6, 6)).astype(np.float32))]
    generated[1]["params"] = np.full(6, np.nan, np.float32)
    generated[2]["params"] = np.array([np.inf] + [0.0] * 5, np.float32)
    cell = CellData(cell_id="c", arch="mlp", dataset="digits", seed=0, best_trial="t", snapshots=vectors,
                    snapshot_rows=pd.DataFrame({"index": range(12)}), generated=pd.DataFrame(generated),
                    baselines=pd.DataFrame(columns=["method", "index", "test_acc", "test_max_iou", "params"]))
    path = tsne_figure([cell], tmp_path / "tsne.png")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(path)[..., :3].std() > 0.01


# -- in a real browser --------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.name != "posix" or os.geteuid() != 0:
        unavailable("no chromium and not root, so it cannot be installed: run `apt-get install -y chromium`")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                unavailable(f"chromium could not be installed ({' '.join(cmd)}: {proc.stderr.strip()[-300:]})")
    except (OSError, subprocess.TimeoutExpired) as err:
        unavailable(f"chromium could not be installed: {err}")
    found = shutil.which("chromium")
    if not found:
        unavailable("apt-get installed no `chromium` executable")
    return found


def _headless(chromium: str, *args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=180, env=dict(os.environ, HOME=profile))


def test_report_renders_in_a_headless_browser(reported, tmp_path):
    import matplotlib.image

    store, out, _, _ = reported
    chromium = _chromium()
    page = (out / "index.html").resolve().as_uri()
    shot = tmp_path / "screenshot.png"
    proc = _headless(chromium, f"--screenshot={shot}", "--window-size=1400,3000", page)
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1400)
    assert pixels.std() > 0.05, "the screenshot is a single colour"
    assert len(np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) > 50  # text and figures, drawn

    dom = _headless(chromium, "--dump-dom", "--window-size=1400,3000", page).stdout
    n_cells = store.read("sources", columns=["cell_id"]).num_rows
    tables = re.findall(r"<table\b.*?</table>", dom, flags=re.S)
    assert len(tables) == 5, "the summary's four tables and the Runs table"
    assert re.findall(r"<tr\b", re.search(r"<tbody>(.*?)</tbody>", tables[4], flags=re.S).group(1))  # >= 1 run
    for table in tables[:4]:
        body = re.search(r"<tbody>(.*?)</tbody>", table, flags=re.S).group(1)
        assert len(re.findall(r"<tr\b", body)) == n_cells
    images = re.findall(r"<img\b[^>]*>", dom)
    assert sorted(re.search(r'src="([^"]+)"', i).group(1) for i in images) == sorted(ALL_FIGURES)


# -- at sweep scale -------------------------------------------------------------------------------


def test_the_report_bounds_panels_for_many_cells(tmp_path, monkeypatch):
    """Beyond MAX_PANELS cells every figure pools them, one panel per arch x dataset (at most MAX_PANELS);
    the index page has the arch x dataset table; every cell has its page, linked from its row; beyond
    INDEX_CELLS cells the per-cell tables leave the index for cells.html. A synthetic 13-cell sweep (the
    results_scale benchmark's, small), fANOVA stubbed out: seconds."""
    import orchestrator.results.canvas as canvas
    import orchestrator.results.pages as pages
    import orchestrator.results.search_figures as search_figures
    from benchmarks.results_scale import build
    from orchestrator.results.canvas import MAX_PANELS, panels_of

    # 400 cells in 29 arch x dataset groups: the first 12 groups, every one of their cells pooled
    sources = pd.DataFrame([{"cell_id": f"a{a}-d{d}-s{s}", "arch": f"a{a:02d}", "dataset": f"d{d}", "seed": s}
                            for a in range(15) for d in range(2) for s in range(14)][:400])
    panels, note = panels_of(sources)
    assert len(panels) == MAX_PANELS and "the first 12 of 29" in note
    assert all(len(p.cells) == 14 and len({c.split("-s")[0] for c in p.cells}) == 1 for p in panels)
    assert len(panels_of(sources.iloc[:MAX_PANELS])[0]) == MAX_PANELS  # up to 12 cells: a panel per cell

    store = build(tmp_path, 13, 2, k=10, n=6, log=lambda s: None)  # 4 archs x 2 datasets, 13 cells
    panels_drawn: dict[str, int] = {}
    save = canvas.save

    def counting(fig, path):
        panels_drawn[path.name] = sum(bool(ax.get_title()) for ax in fig.axes)  # colour bars have no title
        return save(fig, path)

    monkeypatch.setattr(canvas, "save", counting)
    monkeypatch.setattr(search_figures, "cell_importance", lambda trials, knobs, **kw: (None, "not computed in this test"))
    monkeypatch.setattr(pages, "INDEX_CELLS", 5)
    index = write_report(store, tmp_path / "report")
    assert set(panels_drawn) == set(ALL_FIGURES)
    assert all(0 < n <= MAX_PANELS for n in panels_drawn.values()), panels_drawn
    assert panels_drawn["similarity.png"] == 8 and panels_drawn["search_history.png"] == 8  # the groups
    html = index.read_text()
    assert "<h3>By architecture x dataset</h3>" in html and 'href="cells.html"' in html
    assert "<h3>Collapse</h3>" not in html  # the per-cell tables are on cells.html
    everyone = (index.parent / "cells.html").read_text()
    cells = store.read("sources", columns=["cell_id"]).column("cell_id").to_pylist()
    for cell in cells:
        page = index.parent / f"cell-{cell}.html"
        assert page.is_file() and cell in page.read_text() and f'href="cell-{cell}.html"' in everyone
    assert everyone.count("<h3>Collapse</h3>") == 1
    md = (index.parent / "summary.md").read_text()
    assert "## By architecture x dataset" in md


def test_trust_warnings_name_failed_collections_memorising_trials_and_ties():
    """One line per problem, for the cell that has it: a failed or uniform collection, a memorising
    val-selected trial (mean max-IoU at or above the snapshots' leave-one-out), a val-accuracy tie."""
    from orchestrator.results.trust import trust_warnings

    base = dict(dataset="digits", collection="healthy", collection_reason=None, pdiff_verdict="novel",
                pdiff_max_iou=0.80, snapshot_loo_max_iou=0.85, memorising_trials=0, trials=3, tied_trials=1,
                best_trial="t1")
    df = pd.DataFrame([
        base | dict(arch="a", seed=0),
        base | dict(arch="b", seed=0, collection="failed", collection_reason="collection diverged: x; lower y"),
        base | dict(arch="c", seed=0, collection="uniform", collection_reason="novelty unmeasurable: z"),
        base | dict(arch="d", seed=0, pdiff_verdict="memorising", pdiff_max_iou=0.86, memorising_trials=2),
        base | dict(arch="e", seed=0, tied_trials=3),
    ])
    lines = trust_warnings(df)
    assert len(lines) == 4, lines
    assert not any(line.startswith("a /") for line in lines)  # a healthy, novel cell without ties: no line
    by = {line.split(" /")[0]: line for line in lines}
    assert "COLLECTION FAILED" in by["b"] and "lower y" in by["b"]
    assert "NOVELTY UNMEASURABLE" in by["c"]
    assert "MEMORISING" in by["d"] and "0.860" in by["d"] and "0.850" in by["d"] and "2 of 3" in by["d"]
    assert "3 trials tie" in by["e"]
