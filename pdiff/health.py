"""Stage 1 checks its own output: are the collected snapshots fit for stage 2 to build on?

A collection that diverged (measured: cnn_small's middle convolution collected at the source's lr went
from 96.7% to 11% test accuracy within 8 snapshots) gives stage 2 chance-level snapshots, and p-diff
then reproduces chance-level models that read like any other trial. So:
- `failed`: the snapshots' mean val accuracy is more than `max_acc_drop` points below the source's, or a
  collection loss went non-finite or grew `DIVERGENCE_FACTOR` times over its start;
- `uniform`: the snapshots are too alike to measure novelty against (`pdiff.verdicts.snapshots_uniform`):
  stored and flagged "novelty unmeasurable", not failed;
- `healthy` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .verdicts import UNIFORM_DISTINCT, UNIFORM_IOU, snapshots_uniform

__all__ = ["Health", "collection_health", "loss_problem", "DIVERGENCE_FACTOR", "MAX_ACC_DROP"]

DIVERGENCE_FACTOR = 1e3  # a loss that ends this many times above where it started has diverged
MAX_ACC_DROP = 5.0  # percentage points the snapshots' mean val accuracy may fall below the source's


@dataclass(frozen=True)
class Health:
    status: str  # healthy | uniform | failed
    reason: str | None = None


def loss_problem(losses: Sequence[float], what: str, tail: int = 20) -> str | None:
    """Why a loss curve diverged (non-finite, or its last `tail` steps' mean DIVERGENCE_FACTOR times its
    first step), or None."""
    bad = next((i for i, x in enumerate(losses) if not math.isfinite(x)), None)
    if bad is not None:
        return f"{what} loss went non-finite at step {bad} ({losses[bad]})"
    if not losses:
        return None
    start, end = losses[0], sum(losses[-tail:]) / len(losses[-tail:])
    if end > DIVERGENCE_FACTOR * max(start, 1e-12):
        return f"{what} loss grew from {start:.3g} to {end:.3g} ({end / max(start, 1e-12):.2g}x)"
    return None


def collection_health(source_val_acc: float, snapshot_val_acc: Sequence[float], losses: Sequence[float],
                      pairwise_iou: float, distinct_sets: int, *, max_acc_drop: float = MAX_ACC_DROP) -> Health:
    """The verdict on one collection. Accuracies are fractions in [0, 1]; `max_acc_drop` is in points."""
    mean = sum(snapshot_val_acc) / max(1, len(snapshot_val_acc))
    problem = loss_problem(list(losses), "collection")
    if problem:
        return Health("failed", f"collection diverged: {problem}; snapshots' mean val acc {100 * mean:.1f}% "
                                f"vs the source's {100 * source_val_acc:.1f}%")
    if 100 * (source_val_acc - mean) > max_acc_drop:
        return Health("failed", f"collection diverged: snapshots' mean val acc {100 * mean:.1f}% vs the source's "
                                f"{100 * source_val_acc:.1f}% (more than {max_acc_drop:g} points below)")
    if snapshots_uniform(pairwise_iou, distinct_sets):
        return Health("uniform", f"novelty unmeasurable: the snapshots are near-copies of each other (pairwise IoU "
                                 f"{pairwise_iou:.3f}, {distinct_sets} distinct mistake sets; needs < {UNIFORM_IOU} "
                                 f"and >= {UNIFORM_DISTINCT})")
    return Health("healthy")
