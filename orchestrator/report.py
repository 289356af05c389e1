"""`python -m orchestrator.report RESULTS_DIR [--out DIR]`: a sweep's results as a folder people can open.

RESULTS_DIR is a sweep's folder (`results/smoke`, `s3://bucket/prefix/smoke`).
The report (default `RESULTS_DIR/report/`) holds `index.html`, which opens
offline in any browser (no network address anywhere; the figures beside it are
referenced by relative file name), `summary.md`, `summary.csv`, the figures
as PNG files (see `orchestrator.results.figures`), and the paper's Table 1,
`table1.html` and `table1.md` (`orchestrator.results.table1`: one row per
architecture x dataset, also printed after the summary).

The summary table, one row per cell, is one DuckDB query over the tables
(`orchestrator.results.sql.report_sql`), built on `orchestrator.results.sql.summary_sql()` and adding columns:

- originals: best and mean test accuracy of the snapshots;
- p-diff, of the val-selected trial (best val accuracy; ties: lower `val_max_iou`,
  then smaller trial id): the test accuracy of the val-selected generated model,
  the best test accuracy (selected on the test set: the paper's protocol,
  optimistic by construction), mean and median (lower middle, as torch.median);
- each baseline (noise, average of 16, Gaussian) likewise; its val-selected model
  is the one with the best val accuracy, ties to the lowest index (as torch.argmax);
- novelty: mean `test_max_iou`, the max IoU of each model's test mistakes to any snapshot's
  (lower = more novel);
- the snapshots' leave-one-out max-IoU, the collection's health and the val-selected trial's verdict
  (collapsed / memorising / novel, `pdiff.verdicts`) with the number of trials tied on val accuracy;
- p-diff against each baseline and its own latent Gaussian: the mean accuracy and mean max-IoU
  differences with their 95% intervals and the word they earn (`trials.vs_<family>`; a side counts only
  when its interval excludes zero);
- the winning trial's id, val accuracy and hyperparameters (the knobs that vary
  across the sweep's trials; every knob where none varies);
- collapse, per family (the snapshots, the val-selected trial's generated models, each
  baseline): mean pairwise IoU of the wrong-prediction sets inside the family (1 = all alike),
  the number of distinct sets, the L2 spread relative to the snapshots', and the flag
  (pdiff.evaluate.family_stats: pairwise IoU >= COLLAPSE_IOU or spread ratio < COLLAPSE_SPREAD);
  how many completed trials collapsed; whether the winning trial's autoencoder reached ae_min_r2.
  A collapsed val-selected trial is also named above the tables and marked in the figures.

Exit status: 0 done, 2 no sweep tables at RESULTS_DIR, an unreadable table file (one line
naming the file), tables of another schema version (one line naming the folder), a column stored
with another type than its declaration (naming the table, the column and the file), or an `--out`
that cannot hold the report: a file, a link, a place inside the sweep's folder other than its
`report/`, or a folder holding files that is not a report of this sweep (a report carries
`_report.json` naming its sweep). Nothing is created before a refusal; the report is written into
a new folder beside its place and renamed into it once complete.

Trials that did not complete (failed, stopped) are left out of every number and figure; the summary counts the failed ones (`failed_trials`).
"""

from __future__ import annotations

import time
from typing import Sequence

import pyarrow as pa

from orchestrator.console import ArgumentParser, printable, refuse, run
from orchestrator.results.console import summary_text
from orchestrator.results.report import Refused, summary_table, write_report
from orchestrator.results.table1 import table1_text
from orchestrator.results.views import one_line
from orchestrator.store import paths
from orchestrator.store.locate import parse_results_dir
from orchestrator.store.errors import CorruptTable, OldTables


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m orchestrator.report", description=__doc__.split("\n")[0])
    parser.add_argument("results_dir", metavar="RESULTS_DIR", help="a sweep's folder, e.g. results/smoke or s3://...")
    parser.add_argument("--out", help="report folder (default: RESULTS_DIR/report): new, empty, or an earlier "
                                      "report of this sweep")
    parser.add_argument("--quiet", action="store_true", help="print only where the report is")
    args = parser.parse_args(argv)
    try:
        store = parse_results_dir(args.results_dir)
        if not store.files("sources"):
            return refuse(f"{args.results_dir}: no sweep tables here (expected {store.uri}/sources/*/*.parquet)")
    except (ValueError, OSError, pa.ArrowException) as err:  # a bad URI, an unreadable folder
        return refuse(one_line(err))
    say = (lambda s: None) if args.quiet else (lambda s: print(f"  {s}", flush=True))
    t0 = time.perf_counter()
    try:
        index = write_report(store, args.out, log=say)
        if not args.quiet:
            df, _, shown = summary_table(store)
            print("\n" + summary_text(df, shown) + "\n\n" + table1_text(df) + "\n")
    except Refused as err:  # one line naming the folder or the column
        return refuse(err)
    except (CorruptTable, OldTables) as err:  # one line naming the file (or folder)
        return refuse(one_line(err))
    where = f"{store.uri}/{paths.REPORT}/index.html" if args.out is None and not store.is_local else str(index)
    print(f"report: {printable(where)} ({time.perf_counter() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    run(main)
