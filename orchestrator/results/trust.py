"""The warnings that say when a number cannot be trusted: a collapsed or memorising val-selected trial, a failed or
uniform collection, trials tied on val accuracy."""

from __future__ import annotations

import math

import pandas as pd

from orchestrator.console import cell_label
from orchestrator.results.layout import format_value


def collapse_warnings(df: pd.DataFrame) -> list[str]:
    """One line per cell whose val-selected trial is collapsed (its N generated models are one model)."""
    out = []
    for r in df.itertuples():
        flag = r.pdiff_collapsed
        if flag is None or flag is pd.NA or (isinstance(flag, float) and math.isnan(flag)) or not flag:
            continue
        of = (f"; {format_value('collapsed_trials', r.collapsed_trials)} of {format_value('trials', r.trials)} completed trials "
              "collapsed")
        out.append(f"{cell_label(r.arch, r.dataset, r.seed)}: the val-selected trial {r.best_trial} is COLLAPSED "
                   f"(pairwise IoU {format_value('pdiff_pairwise_iou', r.pdiff_pairwise_iou)}, "
                   f"{format_value('pdiff_distinct_sets', r.pdiff_distinct_sets)} distinct wrong-prediction set(s), "
                   f"spread {format_value('pdiff_spread_ratio', r.pdiff_spread_ratio)}x the snapshots'): its generated "
                   f"models are (nearly) one model, so its accuracy and novelty are one model's{of}.")
    return out


def is_known(v) -> bool:
    return v is not None and v is not pd.NA and not (isinstance(v, float) and math.isnan(v))


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
                       f"the snapshots {format_value('pdiff_max_iou', r.pdiff_max_iou)} is at or above the snapshots' own "
                       f"{format_value('snapshot_loo_max_iou', r.snapshot_loo_max_iou)} (each to the others); "
                       f"{format_value('memorising_trials', r.memorising_trials)} of {format_value('trials', r.trials)} completed "
                       f"trials memorise")
        ties = getattr(r, "tied_trials", None)
        if is_known(ties) and ties > 1:
            out.append(f"{cell}: {ties:.0f} trials tie on val accuracy; the selected one is the lowest val "
                       f"max-IoU among them, then the smallest trial id")
    return out
