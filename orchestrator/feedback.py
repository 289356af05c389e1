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
import math
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from . import paths
from .sql import ablation_sql, completed_trials_sql, curves_sql, runs_sql
from .tables import Store

__all__ = ["CURVE_POINTS", "FIGURES", "LossRecorder", "Journal", "RunRecord", "decimate", "write_curves",
           "ablation_tables", "curves_figure", "feedback_sections"]

CURVE_POINTS = 200  # points per phase and trial in the `curves` table
MAX_PANELS = 12  # cells drawn in the loss-curve figure, and ablation tables shown
OTHER_TRIALS = 4  # trials drawn faint beside a cell's val-selected trial
MAX_RUNS = 20  # rows of the report's Runs table (the latest)
PHASES = {"ae": ("autoencoder", "#1f77b4"), "ldm": ("latent diffusion", "#ff7f0e")}

FIGURES: dict[str, tuple[str, str]] = {
    "loss_curves.png": (
        "Training losses",
        "Training loss against step (log scale) of the autoencoder (MSE of the reconstruction, normalised "
        "units, with the noise augmentation on) and of the latent diffusion model (MSE of the predicted noise), "
        "from the `curves` table: bold, the cell's val-selected trial; faint, up to 4 other completed trials "
        "(best val accuracy first). Each point is the mean loss of the steps since the previous point (at most "
        "200 points per phase and trial).",
    ),
}


# -- loss curves ---------------------------------------------------------------


def decimate(steps: Sequence[int], losses: Sequence[float], max_points: int = CURVE_POINTS) -> list[tuple[int, float]]:
    """At most `max_points` (step, loss) points of a curve: the points as they are when there are few
    enough, else `max_points` consecutive bins, each giving its last step and its mean loss."""
    steps, losses = np.asarray(steps, dtype=np.int64), np.asarray(losses, dtype=np.float64)
    n = len(losses)
    if n <= max_points:
        return [(int(s), float(v)) for s, v in zip(steps, losses)]
    edges = np.linspace(0, n, max_points + 1).round().astype(int)
    return [(int(steps[b - 1]), float(losses[a:b].mean())) for a, b in zip(edges[:-1], edges[1:])]


class LossRecorder:
    """`on_step(phase, step, loss)` for `pdiff.run_pdiff` that keeps what it sees and passes it on (to the
    progress reporter). The losses it saw are the curve of a run that raised (a diverged trial); a run that
    finished has every step's loss (`PdiffRun.ae.losses`, `.ldm.losses`), which `rows` prefers."""

    def __init__(self, forward: Callable[[str, int, float], None] | None = None):
        self.forward = forward
        self.seen: dict[str, list[tuple[int, float]]] = {}

    def __call__(self, phase: str, step: int, loss: float) -> None:
        self.seen.setdefault(phase, []).append((int(step), float(loss)))
        if self.forward:
            self.forward(phase, step, loss)

    def curves(self, run=None) -> dict[str, tuple[list[int], list[float]]]:
        out = {phase: ([s for s, _ in points], [v for _, v in points]) for phase, points in self.seen.items()}
        for phase, model in (("ae", getattr(run, "ae", None)), ("ldm", getattr(run, "ldm", None))):
            losses = list(getattr(model, "losses", None) or [])
            if losses:
                out[phase] = (list(range(len(losses))), losses)
        return out

    def rows(self, trial_id: str, run=None, max_points: int = CURVE_POINTS) -> list[dict[str, Any]]:
        return [{"trial_id": trial_id, "phase": phase, "step": step, "loss": loss}
                for phase, (steps, losses) in sorted(self.curves(run).items())
                for step, loss in decimate(steps, losses, max_points)]


def write_curves(store: Store, cell_id: str, trial_id: str, recorder: LossRecorder, run=None) -> None:
    """The trial's `curves` file (before its `trials` row); none where no loss was seen."""
    rows = recorder.rows(trial_id, run)
    if rows:
        store.write("curves", cell_id, trial_id, rows)
    else:
        store.delete("curves", cell_id, trial_id)


def curves_figure(store: Store, con, best: dict[str, str | None], labels: dict[str, str], path: Path) -> Path:
    """`loss_curves.png`: one panel per cell (at most MAX_PANELS), log-scale loss against step."""
    from .figures import _grid, _message, _save

    cells = list(labels)[:MAX_PANELS]
    fig, axes = _grid(len(cells), 4.6, 3.4)
    if not cells:
        _message(axes[0], "no cells in this sweep")
    trials = con.execute(completed_trials_sql("cell_id, trial_id, val_acc")).df()
    for ax, cell in zip(axes, cells):
        ranked = trials[trials.cell_id == cell].sort_values(["val_acc", "trial_id"], ascending=[False, True])
        chosen = best.get(cell)
        others = [t for t in ranked.trial_id if t != chosen][:OTHER_TRIALS]
        wanted = ([chosen] if chosen else []) + others
        if not wanted:
            _message(ax, "no completed trial", labels[cell])
            continue
        curves = con.execute(curves_sql(), [cell, wanted]).df()
        curves = curves[np.isfinite(curves.loss) & (curves.loss > 0)]
        if curves.empty:
            _message(ax, "no loss curves stored (trials written before the `curves` table)", labels[cell])
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
    return _save(fig, path, FIGURES[path.name][0])


# -- the Optuna study as a journal -----------------------------------------------


class Journal:
    """A cell's Optuna study in a journal file, `<sweep>/optuna/<cell_id>.log`, that optuna-dashboard opens.

    `adopt` copies the study rebuilt from the tables (in memory) into a fresh journal, which replaces the
    old one at once (a rename), and returns the journal's storage for the search to go on in. On an object
    store the journal is a local temporary file, uploaded by `publish` (after each trial)."""

    def __init__(self, store: Store, cell_id: str):
        self.store, self.cell_id = store, cell_id
        self.relpath = paths.journal(cell_id)
        if store.is_local:
            self.local, self._tmpdir = store.path(self.relpath), None
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="pdiff-optuna-")
            self.local = os.path.join(self._tmpdir, f"{cell_id}.log")

    def adopt(self, storage, study_name: str):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        directory = os.path.dirname(self.local)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(self.local)}.{uuid.uuid4().hex}.tmp")
        try:
            optuna.copy_study(from_study_name=study_name, from_storage=storage,
                              to_storage=JournalStorage(JournalFileBackend(tmp)))
            os.replace(tmp, self.local)
        finally:
            for leftover in (tmp, f"{tmp}.lock"):
                if os.path.lexists(leftover):
                    os.remove(leftover)
        self.publish()
        return JournalStorage(JournalFileBackend(self.local))

    def publish(self) -> None:
        """Upload the journal (object-store sweeps; a local sweep's journal is written in place)."""
        if self._tmpdir is not None and os.path.exists(self.local):
            with open(self.local, "rb") as f:
                self.store.write_bytes(self.relpath, f.read())

    def close(self) -> None:
        self.publish()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


# -- the runs table ----------------------------------------------------------------

VERSIONS = ("torch", "ray", "optuna", "pyarrow", "duckdb")


def _git(*args: str) -> str | None:
    where = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class RunRecord:
    """One run of `python -m orchestrator.sweep`, as a row of the `runs` table (`<sweep>/runs/<run_id>.parquet`).

    `start` writes it with outcome 'running'; `end` replaces it with the outcome, exit status and end time.
    `exit_hook` (for an ExitStack) ends it as 'interrupted' (Ctrl-C) or 'failed' when the run raises. A run
    starts holding the sweep's lease, so a row still 'running' then is a run that ended without recording it
    (killed, its lease taken over as stale, or its storage failed): `start` marks it 'abandoned', naming
    this run as the one that took over."""

    store: Store
    command: str
    run_id: str = field(default_factory=lambda: _now().strftime("r%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6])
    started_at: datetime = field(default_factory=_now)
    cluster: dict[str, Any] = field(default_factory=dict)
    ended: bool = False

    def observe_cluster(self) -> None:
        """The connected Ray cluster's alive nodes, CPUs and GPUs (kept for the next row written)."""
        import ray

        if not ray.is_initialized():
            return
        resources = ray.cluster_resources()
        self.cluster = {"hosts": sum(1 for n in ray.nodes() if n.get("Alive")),
                        "cluster_cpus": float(resources.get("CPU", 0.0)),
                        "cluster_gpus": float(resources.get("GPU", 0.0))}

    def row(self, outcome: str, exit_status: int | None, error: str | None, ended_at: datetime | None) -> dict:
        commit = _git("rev-parse", "HEAD")
        dirty = None if commit is None else bool(_git("status", "--porcelain", "--untracked-files=no"))
        return {
            "run_id": self.run_id, "command": self.command, "started_at": self.started_at, "ended_at": ended_at,
            "seconds": (ended_at - self.started_at).total_seconds() if ended_at else None,
            "outcome": outcome, "exit_status": exit_status, "error": error,
            "git_commit": commit, "git_dirty": dirty, "driver_host": socket.gethostname(),
            "hosts": None, "cluster_cpus": None, "cluster_gpus": None, **self.cluster,
            "python_version": platform.python_version(), **{f"{p}_version": _version(p) for p in VERSIONS},
        }

    def _write(self, *args) -> None:
        self.store.write("runs", None, self.run_id, [self.row(*args)])

    def start(self) -> "RunRecord":
        self.observe_cluster()
        self._abandon_others()
        self._write("running", None, None, None)
        return self

    def _abandon_others(self) -> None:
        """Mark the rows of earlier runs still 'running' as 'abandoned' (this run holds the lease now). An
        unreadable runs file is left to healing, which quarantines it."""
        for path in self.store.writer_rows("runs"):
            rows = self.store.read_writer(path) or []
            if len(rows) != 1 or rows[0].get("outcome") != "running" or rows[0].get("run_id") == self.run_id:
                continue
            row = rows[0] | {"outcome": "abandoned", "error": (
                f"abandoned: ended without recording it (killed, or its lease taken over as stale, or its storage "
                f"failed); run {self.run_id} took the sweep over")}
            self.store.write("runs", None, path.rsplit("/", 1)[1].removesuffix(".parquet"), [row])

    def end(self, outcome: str, exit_status: int | None, error: str | None = None) -> None:
        self.ended = True
        self._write(outcome, exit_status, error, _now())

    def exit_hook(self, exc_type, exc, tb) -> bool:
        """For `ExitStack.push`: a run that raises ends 'interrupted' or 'failed', even after `end` (the report
        comes after it); one that returns without `end` ends 'done'."""
        if exc_type is None:
            if not self.ended:
                self.end("done", 0)
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("interrupted", 130)
        else:
            try:
                self.end("failed", 1, " ".join(f"{exc_type.__name__}: {exc}".split())[:500])
            except OSError:  # the storage that failed the run: its row stays 'running' until the next run
                pass
        return False  # the exception (if any) goes on


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
    if not set(ABLATION) <= columns or "selected_acc" not in columns:
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
            acc, m = g.selected_acc.mean(), g.iou.astype(float).mean()
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


def _md(df: pd.DataFrame, index: bool = False) -> str:
    if index:
        df = df.reset_index()
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(c) for c in df.columns) + " |", "|" + "|".join("---" for _ in df.columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(esc(v) for v in row) + " |" for row in df.itertuples(index=False)])


def _html(df: pd.DataFrame, index: bool = False) -> str:
    e = html.escape
    head = ([df.index.name or ""] if index else []) + list(df.columns)
    body = ["<tr>" + (f"<th>{e(str(i))}</th>" if index else "") + "".join(f"<td>{e(str(v))}</td>" for v in row)
            + "</tr>" for i, row in zip(df.index, df.itertuples(index=False))]
    return ("<table>\n<thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody>\n</table>")


def feedback_sections(store: Store, con, df: pd.DataFrame, out: Path, log: Callable[[str], None] = lambda s: None,
                      shown: Sequence[str] | None = None) -> Sections:
    """The loss-curve figure (into `out`; of the cells `shown`, default the first MAX_PANELS), the ablation
    tables and the Runs table, for the report."""
    t0 = time.perf_counter()
    labels = {r.cell_id: f"{r.arch} / {r.dataset} / seed {r.seed}" for r in df.itertuples()}
    best = {r.cell_id: (r.best_trial if isinstance(r.best_trial, str) else None) for r in df.itertuples()}
    drawn = labels if shown is None else {c: labels[c] for c in shown if c in labels}
    sections = Sections({"loss_curves.png": curves_figure(store, con, best, drawn, out / "loss_curves.png")})
    log(f"loss_curves.png ({time.perf_counter() - t0:.1f}s)")

    tables = ablation_tables(con, labels)
    if tables:
        title = "Noise ablation (test accuracy %, val-selected; mean max-IoU)"
        sections.results_html = (f"<h3>{html.escape(title)}</h3>\n<p class=\"note\">{html.escape(ABLATION_NOTE)}</p>\n"
                                 + "\n".join(f"<h4>{html.escape(labels[c])}</h4>\n<div class=\"scroll\">"
                                             f"{_html(t, index=True)}</div>" for c, t in tables.items()))
        sections.results_md = "\n\n".join([f"## {title}", ABLATION_NOTE] + [
            f"### {labels[c]}\n\n{_md(t, index=True)}" for c, t in tables.items()]) + "\n"

    runs = runs_frame(con)
    note = (f"Each run of the sweep command (the latest {MAX_RUNS}, newest first; table `runs`). Outcome "
            "'running' with no end: the run is still going, or was killed; 'abandoned': a run that ended without "
            "recording it, found so by the next run (its error column names that run). commit: the git commit of "
            "orchestrator's source (+dirty: with uncommitted changes; empty: not a git checkout). hosts: "
            "alive Ray nodes.")
    if len(runs):
        sections.runs_html = (f"<h2>Runs</h2>\n<p class=\"note\">{html.escape(note)}</p>\n"
                              f"<div class=\"scroll\">{_html(runs)}</div>")
        sections.runs_md = f"## Runs\n\n{note}\n\n{_md(runs)}\n"
    return sections
