"""The paper's Table 1 (`orchestrator.results.table1`): one row per architecture x dataset from the summary's rows,
its page and console table; and every console line the project prints at most 120 characters wide (the report's
console, the sweep's summary, the dry-run plan of every shipped spec)."""

from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.report import main as report_main
from orchestrator.results.console import WIDTH, fit, sweep_text
from orchestrator.results.layout import format_value
from orchestrator.results.sql import methods
from orchestrator.results.summary import summary
from orchestrator.results.table1 import GROUPS, REFERENCES, table1, table1_html, table1_md, table1_text
from orchestrator.spec import is_placeholder_storage, load_spec
from orchestrator.store.schema import TABLES
from orchestrator.store.tables import Store
from orchestrator.sweep import main as sweep_main

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "sweeps").glob("*.yaml"))
NAN = float("nan")


def _cell(arch: str, dataset: str, seed: int, acc: float, verdict: str | None, diff: float, lo: float,
          hi: float, word: str | None) -> dict:
    """A summary row (`summary_sql`'s output names): accuracies around `acc`, p-diff vs every family diff [lo, hi]."""
    row = {"arch": arch, "dataset": dataset, "seed": seed, "cell_id": f"{arch}-{dataset}-s{seed}",
           "original_mean": acc - 1, "original_best": acc + 1, "pdiff_mean": acc, "pdiff_best_test_paper": acc + 2,
           "pdiff_selected": acc + 0.5, "snapshot_loo_max_iou": 0.9, "pdiff_max_iou": acc / 100,
           "pdiff_verdict": verdict}
    for i, m in enumerate(methods()):
        row |= {f"{m}_selected": acc - i, f"{m}_mean": acc - i - 0.25, f"{m}_max_iou": 0.8 + i / 100}
    for r in REFERENCES:
        row |= {f"vs_{r}": word, f"vs_{r}_acc_diff": diff, f"vs_{r}_acc_lo": lo, f"vs_{r}_acc_hi": hi,
                f"vs_{r}_iou_diff": diff / 10, f"vs_{r}_iou_lo": lo / 10, f"vs_{r}_iou_hi": hi / 10}
    return row


@pytest.fixture
def rows() -> pd.DataFrame:
    """resnet18 / cifar10 over two seeds (one memorising), and a cell whose collection failed (no numbers)."""
    failed = _cell("mlp", "digits", 0, NAN, None, NAN, NAN, NAN, None)
    return pd.DataFrame([_cell("resnet18", "cifar10", 1, 90.0, "memorising", 0.8, -0.5, 2.0, "tie"),
                         _cell("resnet18", "cifar10", 0, 92.0, "novel", 0.2, -1.0, 1.0, "more novel"), failed])


def test_one_row_per_arch_and_dataset_with_seed_means_and_interval_envelopes(rows):
    t = table1(rows).set_index(["arch", "dataset"])
    assert list(t.index) == [("mlp", "digits"), ("resnet18", "cifar10")]
    r = t.loc[("resnet18", "cifar10")]
    assert r.seed == "0, 1" and r.cells == 2
    assert (r.original_mean, r.original_best, r.pdiff_mean, r.pdiff_best_test_paper, r.pdiff_selected) == (
        90.0, 92.0, 91.0, 93.0, 91.5)
    assert r.pdiff_max_iou == pytest.approx(0.91) and r.snapshot_loo_max_iou == pytest.approx(0.9)
    assert (r.noise_selected, r.noise_mean, r.gaussian_selected) == (91.0, 90.75, 89.0)
    assert r.pdiff_verdict == "memorising 1, novel 1"  # disagreeing cells: each word with its count
    for ref in REFERENCES:  # the mean difference in the envelope of the cells' intervals
        assert r[f"vs_{ref}_acc"] == "+0.50 [-1.00, +2.00]", ref
        assert r[f"vs_{ref}_iou"] == "+0.050 [-0.100, +0.200]", ref
        assert r[f"vs_{ref}"] == "more novel 1, tie 1"
    m = t.loc[("mlp", "digits")]
    assert m[["pdiff_selected", "pdiff_verdict", "vs_noise_acc", "vs_noise"]].isna().all()
    one = table1(rows.iloc[[1]]).iloc[0]  # one cell: its own interval and word
    assert one.vs_noise_acc == "+0.20 [-1.00, +1.00]" and one.vs_noise == "more novel" and one.seed == "0"


def test_page_markdown_and_console_show_every_number(rows):
    t = table1(rows)
    page, md, text = table1_html(rows, "demo"), table1_md(rows, "demo"), table1_text(rows)
    assert '<a href="index.html">' in page and "<title>p-diff sweep demo: Table 1</title>" in page
    for heading, sub in GROUPS:
        assert html.escape(heading) in page
        for column, _, short in sub:
            assert short in md and short in text, short
    for v in ("91.50", "93.00", "0.910", "+0.50 [-1.00, +2.00]", "+0.050 [-0.100, +0.200]", "memorising 1, novel 1"):
        assert v in page and v in md and v in text, v
    assert "n/a" in text and "n/a" in md  # the failed cell's numbers
    lines = text.splitlines()
    assert max(map(len, lines)) <= WIDTH
    # every number of a row is on the console, in the rows that start with its keys
    row = t.iloc[1]
    shown = " ".join(line for line in lines if line.startswith("resnet18"))
    for _, sub in GROUPS:
        for column, _, _ in sub:
            assert format_value(column, row[column]) in shown, column


def test_fit_splits_a_wide_table_and_keeps_groups_together():
    flat = pd.DataFrame({"arch": ["a"], "dataset": ["d"], "seed": ["0"]}
                        | {f"c{i}": [f"{i:>10}"] for i in range(30)})
    tables = fit(flat, [["c3", "c4", "c5"]], width=60)
    assert len(tables) > 1 and all(len(line) <= 60 for t in tables for line in t.splitlines())
    assert all(t.splitlines()[0].split()[:3] == ["arch", "dataset", "seed"] for t in tables)
    heads = [t.splitlines()[0].split()[3:] for t in tables]
    assert [c for h in heads for c in h] == [f"c{i}" for i in range(30)]  # every column once, in order
    assert any({"c3", "c4", "c5"} <= set(h) for h in heads)
    assert fit(flat[["arch", "dataset", "seed"]]) == ["arch  dataset  seed\na     d        0"]


# -- the tiny sweep ------------------------------------------------------------------------------------


def test_report_writes_table1_and_its_console_fits_120_columns(finished_sweep, tmp_path, capsys):
    """The report command on the tiny sweep: table1.html and .md beside index.html (linked), Table 1 printed, and
    no console line over 120 characters."""
    copy = tmp_path / finished_sweep.sweep  # the shared sweep stays untouched
    for part in TABLES:
        if Path(finished_sweep.path(part)).is_dir():
            shutil.copytree(finished_sweep.path(part), copy / part)
    store = Store(str(tmp_path), copy.name)
    assert report_main([str(copy), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    long = [line for line in out.splitlines() if len(line) > WIDTH]
    assert long == [], long
    assert "Table 1: test accuracy (%)" in out
    folder = tmp_path / "report"
    assert 'href="table1.html"' in (folder / "index.html").read_text()
    assert "](table1.md)" in (folder / "summary.md").read_text()

    # Table 1's rows are the summary's numbers (one seed per arch x dataset here)
    cells = summary(store).set_index("arch")
    md = (folder / "table1.md").read_text().splitlines()
    table = [[c.strip() for c in line.strip("|").split(" | ")] for line in md if line.startswith("| ")]
    head, body = table[0], {r[0]: dict(zip(table[0], r)) for r in table[1:]}
    assert set(body) == set(cells.index) and len(head) == 3 + sum(len(sub) for _, sub in GROUPS)
    short = {s: c for _, sub in GROUPS for c, _, s in sub}
    for arch, row in body.items():
        cell = cells.loc[arch]
        for s, column in short.items():
            if column.startswith("vs_") and column.endswith(("_acc", "_iou")):
                n = 2 if column.endswith("_acc") else 3
                want = (f"{cell[column + '_diff']:+.{n}f} [{cell[column + '_lo']:+.{n}f}, "
                        f"{cell[column + '_hi']:+.{n}f}]")
            else:
                want = format_value(column, cell[column])
            assert row[s] == want, (arch, s, row[s], want)
    page = (folder / "table1.html").read_text()
    assert all(re.search(rf"<td[^>]*>{re.escape(arch)}</td>", page) for arch in cells.index)


def test_the_sweeps_summary_fits_120_columns(finished_sweep):
    text = sweep_text(summary(finished_sweep))
    assert max(map(len, text.splitlines())) <= WIDTH
    assert "original_best" in text and "pdiff_pair_iou" in text and "vs_latent_gauss" in text


@pytest.mark.parametrize("spec", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_specs_plan_fits_120_columns(spec, tmp_path, capsys):
    storage = [] if is_placeholder_storage(load_spec(spec).storage) else ["--storage", str(tmp_path / "store")]
    assert sweep_main([str(spec), "--dry-run", *storage]) == 0
    out = capsys.readouterr().out
    long = [line for line in out.splitlines() if len(line) > WIDTH]
    assert long == [], long
    for k, d in load_spec(spec).search.items():  # a distribution is never broken across lines
        assert f"{k} ~ {d.describe()}" in out, k


def test_the_plan_of_a_finished_sweep_fits_120_columns(tiny_spec, finished_sweep, capsys):
    assert sweep_main([str(tiny_spec), "--dry-run", "--storage", finished_sweep.storage]) == 0
    out = capsys.readouterr().out
    assert "done: 2 of 2 cells" in out and max(map(len, out.splitlines())) <= WIDTH
