"""The warnings that say when a number cannot be trusted: a collapsed or memorising val-selected trial, a failed or
uniform collection, trials tied on val accuracy, an autoencoder short of its target. Each sentence is worded here
alone: the report's pages, its console summary and the sweep's end print these (`orchestrator.results.console`).
The verdicts themselves are the stored ones (`pdiff.verdicts` computed them)."""

from __future__ import annotations

import math

import pandas as pd

from orchestrator.console import cell_label
from orchestrator.results.layout import count_of, format_value

__all__ = ["is_known", "is_flagged", "collapse_warnings", "trust_warnings", "report_warnings", "sweep_warnings"]


def is_known(v) -> bool:
    return v is not None and v is not pd.NA and not (isinstance(v, float) and math.isnan(v))


def is_flagged(v) -> bool:
    """A stored yes/no flag that is set; unknown (None, NULL, NaN: tables that predate it) counts as not set."""
    return is_known(v) and bool(v)


def _collapse_evidence(r) -> str:
    """Why a cell's val-selected trial counts as collapsed, in its summary row's numbers."""
    return (f"pairwise IoU {format_value('pdiff_pairwise_iou', r.pdiff_pairwise_iou)}, "
            f"{format_value('pdiff_distinct_sets', r.pdiff_distinct_sets)} distinct wrong-prediction set(s), "
            f"spread {format_value('pdiff_spread_ratio', r.pdiff_spread_ratio)}x the snapshots'): its generated "
            "models are (nearly) one model")


def collapse_warnings(df: pd.DataFrame) -> list[str]:
    """One line per cell whose val-selected trial is collapsed (its N generated models are one model)."""
    out = []
    for r in df.itertuples():
        if not is_flagged(r.pdiff_collapsed):
            continue
        of = (f"; {format_value('collapsed_trials', r.collapsed_trials)} of {format_value('trials', r.trials)} "
              "completed trials collapsed")
        out.append(f"{cell_label(r.arch, r.dataset, r.seed)}: the val-selected trial {r.best_trial} is COLLAPSED "
                   f"({_collapse_evidence(r)}, so its accuracy and novelty are one model's{of}.")
    return out


def trust_warnings(df: pd.DataFrame) -> list[str]:
    """One line per cell whose collection failed or cannot measure novelty, whose val-selected trial is
    memorising, or whose val-selected trial was one of several tied on val accuracy."""
    out = []
    for r in df.itertuples():
        cell = cell_label(r.arch, r.dataset, r.seed)
        collection = getattr(r, "collection", None)
        if collection == "failed":
            out.append(f"{cell}: COLLECTION FAILED, no baselines or trials: {r.collection_reason}")
        elif collection == "uniform":
            out.append(f"{cell}: NOVELTY UNMEASURABLE: {r.collection_reason}")
        if getattr(r, "pdiff_verdict", None) == "memorising":
            trial = f" {r.best_trial}" if isinstance(getattr(r, "best_trial", None), str) else ""
            out.append(f"{cell}: the val-selected trial{trial} is MEMORISING: its models' mean max-IoU to "
                       f"the snapshots {format_value('pdiff_max_iou', r.pdiff_max_iou)} is at or above the "
                       f"snapshots' own {format_value('snapshot_loo_max_iou', r.snapshot_loo_max_iou)} (each to the "
                       f"others); {format_value('memorising_trials', r.memorising_trials)} of "
                       f"{format_value('trials', r.trials)} completed trials memorise")
        ties = getattr(r, "tied_trials", None)
        if is_known(ties) and ties > 1:
            out.append(f"{cell}: {ties:.0f} trials tie on val accuracy; the selected one is the lowest val "
                       f"max-IoU among them, then the smallest trial id")
    return out


def report_warnings(df: pd.DataFrame) -> list[str]:
    """Every warning of the report's summary (`orchestrator.results.report.summary_table`), as its index page
    and its console summary list them: the collapsed cells first."""
    return ["COLLAPSED: " + w for w in collapse_warnings(df)] + trust_warnings(df)


def sweep_warnings(df: pd.DataFrame) -> list[str]:
    """The lines under the sweep's summary (`orchestrator.results.summary.summary`'s rows), each 'cell <label>: ':
    per cell a collapsed val-selected trial and an autoencoder short of its target, then trust_warnings."""
    out = []
    for r in df.itertuples():
        label = cell_label(r.arch, r.dataset, r.seed)
        if is_flagged(r.pdiff_collapsed):
            out.append(f"cell {label}: best trial COLLAPSED ({_collapse_evidence(r)}, not new ones; "
                       f"{count_of(r.collapsed_trials, r.trials)} completed trials collapsed")
        if is_known(r.ae_converged) and not r.ae_converged:
            out.append(f"cell {label}: the best trial's autoencoder did not reach ae_min_r2 within ae_steps")
    return out + [f"cell {line}" for line in trust_warnings(df)]
