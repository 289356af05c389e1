"""What a researcher watches a sweep by: loss curves, the Optuna study as a journal, run metadata, the noise
ablation as the paper's table.

- `curves` table (written by each trial, before its `trials` row, the commit marker): the AE and LDM
  training losses of the trial, at most `CURVE_POINTS` points per phase (`decimate`: each point is the
  mean loss of the steps since the previous one). Drawn by `curves_figure` (`loss_curves.png`).
- The Optuna study of each cell as a journal file, `<sweep>/optuna/<cell_id>.log` (`Journal`): rebuilt
  from the `trials` table when a cell's search starts, then written by the search itself as trials are
  asked and told, so `optuna-dashboard <sweep>/optuna/<cell_id>.log` shows it during and after a sweep.
  On an object store the journal is written to a local temporary file and uploaded after each trial.
- `runs` table (`RunRecord`): one row per sweep command run (commit, package versions, hosts, start, end,
  outcome), written when the run starts and replaced by the same writer when it ends.
- The noise-augmentation ablation (`ablation_tables`): per cell whose trials grid `input_noise` x
  `latent_noise`, a table of the val-selected test accuracy (and the mean max-IoU to the snapshots).

`feedback_sections` gives the report (orchestrator.report) its figure and its HTML / Markdown sections.
Nothing here imports Ray at module level (the report imports no Ray).
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from orchestrator.console import cell_label
from orchestrator.results import canvas
from orchestrator.results.layout import frame_html, md_table
from orchestrator.results.sql import ablation_sql, completed_trials_sql, curves_sql, runs_sql
from orchestrator.store.columns import VERSIONS
from orchestrator.store.tables import Store

MAX_PANELS = canvas.MAX_PANELS  # cells drawn in the loss-curve figure, and ablation tables shown
OTHER_TRIALS = 4  # trials drawn faint beside a cell's val-selected trial
MAX_RUNS = 20  # rows of the report's Runs table (the latest)
PHASES = {"ae": ("autoencoder", "#1f77b4"), "ldm": ("latent diffusion", "#ff7f0e")}

def curves_figure(store: Store, con, best: dict[str, str | None], labels: dict[str, str], path: Path) -> Path:
    """`loss_curves.png`: one panel per cell (at most MAX_PANELS), log-scale loss against step (its title and
    caption: `orchestrator.results.captions.FIGURES`)."""

    cells = list(labels)[:MAX_PANELS]
    fig, axes = canvas.grid(len(cells), 4.6, 3.4)
    if not cells:
        canvas.message(axes[0], "no cells in this sweep")
    trials = con.execute(completed_trials_sql("cell_id, trial_id, val_acc_pct")).df()
    for ax, cell in zip(axes, cells):
        ranked = trials[trials.cell_id == cell].sort_values(["val_acc_pct", "trial_id"], ascending=[False, True])
        chosen = best.get(cell)
        others = [t for t in ranked.trial_id if t != chosen][:OTHER_TRIALS]
        wanted = ([chosen] if chosen else []) + others
        if not wanted:
            canvas.message(ax, "no completed trial", labels[cell])
            continue
        curves = con.execute(curves_sql(), [cell, wanted]).df()
        curves = curves[np.isfinite(curves.loss) & (curves.loss > 0)]
        if curves.empty:
            canvas.message(ax, "no loss curves stored (trials written before the `curves` table)", labels[cell])
            continue
        for trial in reversed(wanted):  # the val-selected trial last, on top
            bold = trial == chosen
            for phase, (name, colour) in PHASES.items():
                c = curves[(curves.trial_id == trial) & (curves.phase == phase)]
                if len(c):
                    ax.plot(c.step, c.loss, color=colour, lw=1.6 if bold else 0.8, alpha=1.0 if bold else 0.35,
                            label=f"{name}, val-selected trial" if bold else None)
        if others:
            ax.plot([], [], color="#888888", lw=0.8, alpha=0.5, label=f"{len(others)} other trial(s)")
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss (MSE)")
        ax.set_title(labels[cell], fontsize=10)
        ax.legend(fontsize=7)
    if len(labels) > MAX_PANELS:
        fig.text(0.5, 0.005, f"the first {MAX_PANELS} of {len(labels)} cells", ha="center", fontsize=8)
    return canvas.save(fig, path)


def runs_frame(con) -> pd.DataFrame:
    """The latest MAX_RUNS runs, newest first, as strings for the report."""
    runs = con.execute(runs_sql(MAX_RUNS)).df()

    def when(v) -> str:
        return "" if v is None or pd.isna(v) else pd.Timestamp(v).tz_convert("UTC").strftime("%Y-%m-%d %H:%M:%S")

    def text(v) -> str:
        return "" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v)

    out = pd.DataFrame({
        "run": runs.run_id, "started (UTC)": runs.started_at.map(when), "ended (UTC)": runs.ended_at.map(when),
        "seconds": runs.seconds.map(lambda v: "" if pd.isna(v) else f"{v:.0f}"),
        "outcome": [o + ("" if pd.isna(x) else f" ({x:.0f})") for o, x in zip(runs.outcome, runs.exit_status)],
        "commit": [text(c)[:12] + ("+dirty" if d is True else "") for c, d in zip(runs.git_commit, runs.git_dirty)],
        "hosts": runs.hosts.map(lambda v: "" if pd.isna(v) else f"{v:.0f}"),
        "CPUs / GPUs": [("" if pd.isna(c) else f"{c:g} / {g:g}") for c, g in zip(runs.cluster_cpus, runs.cluster_gpus)],
        "python": runs.python_version.map(text),
    })
    for p in VERSIONS:
        out[p] = runs[f"{p}_version"].map(text)
    return out


# -- the noise ablation --------------------------------------------------------------

ABLATION = ("input_noise", "latent_noise")  # rows, columns


def ablation_tables(con, labels: dict[str, str]) -> dict[str, pd.DataFrame]:
    """Per cell whose completed trials grid input_noise x latent_noise (both vary, at most 12 values each,
    at least half of the grid measured): rows input noise, columns latent noise, each entry the mean over the
    trials there of the test accuracy of the val-selected generated model (%) and of the mean max-IoU to the
    snapshots (test), as text `acc (iou)`, with `xN` where N > 1 trials share the entry."""
    columns = {r[0] for r in con.execute("DESCRIBE trials").fetchall()}
    if not set(ABLATION) <= columns or "selected_acc_pct" not in columns:
        return {}
    trials = con.execute(ablation_sql("test_max_iou" in columns)).df()
    out = {}
    for cell in labels:
        t = trials[trials.cell_id == cell].dropna(subset=list(ABLATION))
        rows, cols = sorted(t.input_noise.unique()), sorted(t.latent_noise.unique())
        if not (1 < len(rows) <= 12 and 1 < len(cols) <= 12):
            continue
        groups = t.groupby(list(ABLATION))
        if len(groups) < 0.5 * len(rows) * len(cols):
            continue
        table = pd.DataFrame("-", index=[f"{v:g}" for v in rows], columns=[f"{v:g}" for v in cols])
        for (i, j), g in groups:
            acc, m = g.selected_acc_pct.mean(), g.iou.astype(float).mean()
            entry = "n/a" if pd.isna(acc) else f"{acc:.2f}"
            entry += "" if pd.isna(m) else f" ({m:.3f})"
            entry += f" x{len(g)}" if len(g) > 1 else ""
            table.loc[f"{i:g}", f"{j:g}"] = entry
        table.index.name = "input noise \\ latent noise"
        out[cell] = table
        if len(out) == MAX_PANELS:
            break
    return out


ABLATION_NOTE = ("The paper's noise-augmentation ablation, from the completed trials of each cell that grid "
                 "`input_noise` x `latent_noise`: rows input noise (on the normalised parameters), columns "
                 "latent noise (on the latent codes), each entry the test accuracy (%) of the trial's generated "
                 "model with the best val accuracy, and in brackets the mean max IoU of its generated models' test "
                 "mistakes to any snapshot's (lower = more novel, 1 = copies); xN: the mean of N trials. '-': not "
                 "measured.")


# -- the report's sections ---------------------------------------------------------


@dataclass
class Sections:
    figures: dict[str, Path]
    results_html: str = ""  # after the summary tables
    runs_html: str = ""  # before the notes
    results_md: str = ""
    runs_md: str = ""


def feedback_sections(store: Store, con, df: pd.DataFrame, out: Path, log: Callable[[str], None] = lambda s: None,
                      shown: Sequence[str] | None = None) -> Sections:
    """The loss-curve figure (into `out`; of the cells `shown`, default the first MAX_PANELS), the ablation
    tables and the Runs table, for the report."""
    t0 = time.perf_counter()
    labels = {r.cell_id: cell_label(r.arch, r.dataset, r.seed) for r in df.itertuples()}
    best = {r.cell_id: (r.best_trial if isinstance(r.best_trial, str) else None) for r in df.itertuples()}
    drawn = labels if shown is None else {c: labels[c] for c in shown if c in labels}
    sections = Sections({"loss_curves.png": curves_figure(store, con, best, drawn, out / "loss_curves.png")})
    log(f"loss_curves.png ({time.perf_counter() - t0:.1f}s)")

    tables = ablation_tables(con, labels)
    if tables:
        title = "Noise ablation (test accuracy %, val-selected; mean max-IoU)"
        sections.results_html = (f"<h3>{html.escape(title)}</h3>\n<p class=\"note\">{html.escape(ABLATION_NOTE)}</p>\n"
                                 + "\n".join(f"<h4>{html.escape(labels[c])}</h4>\n<div class=\"scroll\">"
                                             f"{frame_html(t, index=True)}</div>" for c, t in tables.items()))
        sections.results_md = "\n\n".join([f"## {title}", ABLATION_NOTE] + [
            f"### {labels[c]}\n\n{md_table(t.reset_index())}" for c, t in tables.items()]) + "\n"

    runs = runs_frame(con)
    note = (f"Each run of the sweep command (the latest {MAX_RUNS}, newest first; table `runs`). Outcome "
            "'running' with no end: the run is still going, or was killed; 'abandoned': a run that ended without "
            "recording it, found so by the next run (its error column names that run). commit: the git commit of "
            "orchestrator's source (+dirty: with uncommitted changes; empty: not a git checkout). hosts: "
            "alive Ray nodes.")
    if len(runs):
        sections.runs_html = (f"<h2>Runs</h2>\n<p class=\"note\">{html.escape(note)}</p>\n"
                              f"<div class=\"scroll\">{frame_html(runs)}</div>")
        sections.runs_md = f"## Runs\n\n{note}\n\n{md_table(runs)}\n"
    return sections
