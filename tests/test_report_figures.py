"""The report's novelty figures (`max_iou.png`, `pareto.png`), their data from the tables, and the figures on the
cell pages."""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.results.figure_data import family_max_iou, load_cells, loo_max_iou, trial_history
from orchestrator.results.front_data import VAL_ACC, fronts, objectives, pareto_front
from orchestrator.results.report import summary_table, write_report
from orchestrator.results.views import connect
from orchestrator.store import paths
from orchestrator.store.tables import Store
from pdiff.evaluate import pack_wrong

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- the data, on handmade inputs -------------------------------------------------------------


def _iou(a: set[int], b: set[int]) -> float:
    return 1.0 if not a | b else len(a & b) / len(a | b)


def test_loo_max_iou_of_handmade_wrong_sets():
    """Each model's max IoU to any *other* model, from packed bits, against sets compared by hand (two empty
    sets: IoU 1; 11 examples: the last byte is partly padding)."""
    n = 11
    sets = [{0, 1, 2, 3}, {0, 1, 2, 9}, {10}, set(), set(), {4, 5, 6, 7, 8, 9, 10}]
    blobs = [pack_wrong(np.isin(np.arange(n), sorted(s))) for s in sets]
    expected = [max(_iou(a, b) for j, b in enumerate(sets) if j != i) for i, a in enumerate(sets)]
    assert expected == [0.6, 0.6, 1 / 7, 1.0, 1.0, 1 / 7]  # the hand count itself
    np.testing.assert_allclose(loo_max_iou(blobs, n), expected, rtol=0, atol=1e-7)  # float32, as torch's
    from pdiff.evaluate import max_iou, unpack_wrong_rows  # the collection's own (torch): the same floats
    np.testing.assert_array_equal(loo_max_iou(blobs, n), max_iou(unpack_wrong_rows(blobs, n)).numpy())
    assert np.isnan(loo_max_iou(blobs[:1], n)).all() and len(loo_max_iou([], n)) == 0  # a family of one, none
    with pytest.raises(ValueError, match="2 bytes"):
        loo_max_iou([blobs[0], b"\x00"], n)


def test_pareto_front_of_handmade_points():
    """Minimise x (max IoU), maximise y (accuracy): the front checked against every pair by hand."""
    x = [0.90, 0.95, 0.80, 0.99, 0.80, 0.70, np.nan, 0.85, 0.70]
    y = [95.0, 96.0, 94.0, 96.0, 93.0, 90.0, 99.0, 94.0, 90.0]
    # 0: on (nothing as novel is as accurate); 1: on; 2: on; 3: beaten by 1 (same y, lower x); 4: beaten by 2;
    # 5 and 8: the same point, both on (neither beats the other); 6: NaN, never; 7: beaten by 2 (lower x, same y)
    assert pareto_front(x, y).tolist() == [True, True, True, False, False, True, False, False, True]
    rng = np.random.default_rng(0)  # and on random points, against the definition pair by pair
    px, py = rng.integers(0, 6, 40) / 5, rng.integers(0, 6, 40).astype(float)
    brute = [not any(px[j] <= px[i] and py[j] >= py[i] and (px[j] < px[i] or py[j] > py[i]) for j in range(40))
             for i in range(40)]
    assert pareto_front(px, py).tolist() == brute
    assert pareto_front([], []).tolist() == []


def test_objectives_from_the_journal(tmp_path):
    store = Store(str(tmp_path), "s")
    store.write_bytes(paths.journal("two"), b'{"op_code":0,"study_name":"x","directions":[2,1]}\n{"op_code":4}\n')
    store.write_bytes(paths.journal("one"), b'{"op_code":0,"study_name":"x","directions":[2]}\n')
    store.write_bytes(paths.journal("bad"), b"not json\n")
    assert objectives(store, ["two", "one", "bad", "missing"]) == {"two": 2, "one": 1}


# -- the data, against the tables of the tiny sweep ----------------------------------------------------


@pytest.fixture(scope="module")
def tables(finished_sweep):
    df, _, _ = summary_table(finished_sweep)
    best = dict(zip(df.cell_id, df.best_trial))
    trials, _ = trial_history(finished_sweep)
    return df, best, trials, load_cells(finished_sweep, best, trials=trials, vectors=[])


def test_max_iou_data_equals_the_tables(finished_sweep, tables):
    """Per cell: the snapshots' leave-one-out max IoUs average to sources.snapshot_loo_max_iou (computed by
    the collection, with torch); p-diff's are the val-selected trial's generated test_max_iou; a baseline's,
    its rows'."""
    df, best, _, cells = tables
    con = connect(finished_sweep)
    for cell in cells:
        data = dict(family_max_iou([cell]))
        stored = con.execute("SELECT snapshot_loo_max_iou, k FROM sources WHERE cell_id = ?", [cell.cell_id]).fetchone()
        assert len(data["original"]) == stored[1]
        assert data["original"].mean() == pytest.approx(stored[0], abs=1e-6)
        generated = con.execute("SELECT test_max_iou FROM generated WHERE cell_id = ? AND trial_id = ? ORDER BY "
                                '"index"', [cell.cell_id, best[cell.cell_id]]).df().test_max_iou.to_numpy()
        np.testing.assert_array_equal(np.sort(data["p-diff"]), np.sort(generated))
        for method, rows in con.execute("SELECT method, list(test_max_iou) FROM baselines WHERE cell_id = ? "
                                        "GROUP BY method", [cell.cell_id]).fetchall():
            np.testing.assert_array_equal(np.sort(data[method]), np.sort(rows))


def test_pareto_data_equals_the_tables(finished_sweep, tables):
    """Every completed trial at its stored val_max_iou and val accuracy; the front by the definition; the
    val-selected trial marked; each baseline at its models' mean val max-IoU and best val accuracy; the snapshots
    at sources.snapshot_loo_val_max_iou and the best snapshot's val accuracy."""
    df, best, trials, cells = tables
    con = connect(finished_sweep)
    found = fronts(trials, cells)
    for cell in cells:
        f = found[cell.cell_id].trials.set_index("trial_id")
        stored = con.execute(f"SELECT trial_id, val_max_iou, {VAL_ACC} FROM trials WHERE cell_id = ? AND status = "
                             "'completed'", [cell.cell_id]).df().set_index("trial_id")
        assert sorted(f.index) == sorted(stored.index) and len(f) == 3
        pd.testing.assert_frame_equal(f[["val_max_iou", VAL_ACC]].sort_index(), stored.sort_index())
        for t, row in f.iterrows():
            beaten = any(o.val_max_iou <= row.val_max_iou and o[VAL_ACC] >= row[VAL_ACC]
                         and (o.val_max_iou < row.val_max_iou or o[VAL_ACC] > row[VAL_ACC]) for _, o in f.iterrows())
            assert row.on_front == (not beaten), t
        assert f.index[f.selected].tolist() == [best[cell.cell_id]]
        refs = {family: (x, y) for family, x, y in found[cell.cell_id].references}
        for method, x, y in con.execute("SELECT method, avg(val_max_iou), 100 * max(val_acc) FROM baselines WHERE "
                                        "cell_id = ? GROUP BY method", [cell.cell_id]).fetchall():
            assert refs[method] == pytest.approx((x, y), abs=1e-9)
        x, y = con.execute("SELECT s.snapshot_loo_val_max_iou, 100 * max(c.val_acc) FROM sources s JOIN checkpoints c "
                           "USING (cell_id) WHERE cell_id = ? GROUP BY ALL", [cell.cell_id]).fetchone()
        assert refs["original"] == pytest.approx((x, y), abs=1e-9)


# -- the report: the new figures and the cell pages ---------------------------------------------


@pytest.fixture(scope="module")
def report(finished_sweep, tmp_path_factory) -> Path:
    """The tiny sweep's report, its Optuna journals included (its search had two objectives)."""
    return write_report(finished_sweep, tmp_path_factory.mktemp("figures") / "report").parent


def test_the_report_draws_the_new_figures(finished_sweep, report):
    for name in ("max_iou.png", "pareto.png"):
        assert (report / name).read_bytes()[:8] == PNG_SIGNATURE, name
    journal = finished_sweep.read_bytes(paths.journal(summary_table(finished_sweep)[0].cell_id.iloc[0]))
    assert json.loads(journal.split(b"\n")[0])["directions"] == [2, 1]  # why pareto.png is drawn
    index = (report / "index.html").read_text()
    assert 'src="max_iou.png"' in index and 'src="pareto.png"' in index
    assert "Max IoU of each model to the snapshots" in index and "Pareto front" in index


def test_every_cell_page_shows_its_figures(finished_sweep, report):
    """Each cell's page shows each figure of the report, as the cell's own panel cut out of it (a PNG smaller
    than the figure), each with its caption; every image it references is a file of the report."""
    import matplotlib.image

    figures = re.findall(r'<img src="([^"]+)"', (report / "index.html").read_text())
    cells = summary_table(finished_sweep)[0].cell_id.tolist()
    for cell in cells:
        page = (report / f"cell-{cell}.html").read_text()
        images = re.findall(r'<img src="([^"]+)"', page)
        assert images == [f"cells/{cell}/{name}" for name in figures], images
        assert page.count("<figcaption>") == len(figures)
        for src, name in zip(images, figures):
            own, whole = matplotlib.image.imread(report / src), matplotlib.image.imread(report / name)
            assert (report / src).read_bytes()[:8] == PNG_SIGNATURE
            assert own.shape[1] < whole.shape[1] and own.shape[0] <= whole.shape[0] and own[..., :3].std() > 0.01
    first, second = (matplotlib.image.imread(report / f"cells/{c}/max_iou.png") for c in cells[:2])
    assert first.shape != second.shape or not np.array_equal(first, second)  # each cell its own panel


def test_a_cell_panel_is_the_report_figures_pixels(finished_sweep, report):
    """A cell's figure is cut out of the report's figure, not drawn again: its pixels are somewhere in it."""
    import matplotlib.image

    cell = summary_table(finished_sweep)[0].cell_id.iloc[0]
    own = matplotlib.image.imread(report / f"cells/{cell}/pareto.png")[..., :3]
    whole = matplotlib.image.imread(report / "pareto.png")[..., :3]
    h, w = own.shape[:2]
    mid = int(np.argmax((own < 0.9).any(axis=2).sum(axis=1)))  # the crop's busiest row: few false matches
    hits = [(r, c) for r, c in itertools.product(range(whole.shape[0] - h + 1), range(whole.shape[1] - w + 1))
            if np.array_equal(whole[r + mid, c:c + w], own[mid]) and np.array_equal(whole[r:r + h, c:c + w], own)]
    assert hits, "the cell's panel is not a region of the report's figure"
