"""What a family of models is, and how two families compare: each rule computed and worded here only.

Torch-free, so that the table readers (summary, report, query) apply the same rules to stored columns.

A *family* is N models drawn by one method (p-diff's generated models, a baseline's, the snapshots):
- `collapsed`: its members are one model (pairwise IoU of their wrong-prediction sets >= COLLAPSE_IOU,
  or its spread relative to the snapshots' < COLLAPSE_SPREAD); its accuracy and novelty are one model's.
- `memorising`: on average its models sit at least as close to some training snapshot (mean max-IoU of
  the test mistakes) as the snapshots sit to each other (their leave-one-out mean max-IoU).
- `novel`: neither.
Two families compare through paired 95% intervals (`pdiff.compare`): a difference counts only when its
interval excludes zero; otherwise it is a tie.
"""

from __future__ import annotations

import math

__all__ = ["COLLAPSE_IOU", "COLLAPSE_SPREAD", "UNIFORM_IOU", "UNIFORM_DISTINCT", "VERDICTS", "COMPARISONS",
           "is_collapsed", "family_verdict", "snapshots_uniform", "comparison", "VERDICT_MEANING"]

# A family is collapsed (its members are one model) when its mean pairwise IoU of wrong-prediction sets
# is at or above COLLAPSE_IOU, or its spread relative to the snapshots' is below COLLAPSE_SPREAD.
COLLAPSE_IOU = 0.99
COLLAPSE_SPREAD = 0.05
# Snapshots this alike leave nothing to measure novelty against: every faithful generator scores ~1.
UNIFORM_IOU = COLLAPSE_IOU
UNIFORM_DISTINCT = 5  # fewer distinct mistake sets than this among the K snapshots

VERDICTS = ("collapsed", "memorising", "novel")
VERDICT_MEANING = {
    "collapsed": "its models are one model (pairwise IoU >= {iou} or spread < {spread}x the snapshots')",
    "memorising": "its models sit closer to a training snapshot than the snapshots sit to each other",
    "novel": "neither collapsed nor closer to the snapshots than they are to each other",
}


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def is_collapsed(pairwise_iou: float, spread_ratio: float) -> bool:
    """A family whose members are one model: either signal alone is enough."""
    return bool(pairwise_iou >= COLLAPSE_IOU or spread_ratio < COLLAPSE_SPREAD)


def family_verdict(collapsed: bool | None, max_iou: float | None, snapshot_loo_max_iou: float | None) -> str | None:
    """`collapsed`, `memorising` or `novel` (None when a signal is missing, e.g. tables of an older schema).

    `max_iou`: the family's mean (over its models) max-IoU of test mistakes to any snapshot;
    `snapshot_loo_max_iou`: the same for each snapshot against the *other* snapshots, averaged."""
    if _missing(collapsed):
        return None
    if collapsed:
        return "collapsed"
    if _missing(max_iou) or _missing(snapshot_loo_max_iou):
        return None
    return "memorising" if max_iou >= snapshot_loo_max_iou else "novel"


def snapshots_uniform(pairwise_iou: float, distinct_sets: int) -> bool:
    """Snapshots too alike to measure novelty against (stored and flagged, not failed)."""
    return bool(pairwise_iou >= UNIFORM_IOU or distinct_sets < UNIFORM_DISTINCT)


COMPARISONS = ("dominates", "more novel", "more accurate", "tie", "trade-off", "worse")


def comparison(acc_lo: float, acc_hi: float, iou_lo: float, iou_hi: float) -> str | None:
    """Family A against family B from the 95% intervals of A - B: accuracy (higher is better) and mean
    max-IoU to the snapshots (lower is more novel). A side counts only when its interval excludes zero.

    `dominates`: more accurate and more novel; `more novel`: more novel at equal accuracy (the claim Zeng
    et al. 2025 test p-diff for); `more accurate`: at equal novelty; `tie`: neither differs;
    `trade-off`: better on one, worse on the other; `worse`: worse on one, equal or worse on the other."""
    if any(_missing(x) for x in (acc_lo, acc_hi, iou_lo, iou_hi)):
        return None
    acc = 1 if acc_lo > 0 else -1 if acc_hi < 0 else 0
    nov = 1 if iou_hi < 0 else -1 if iou_lo > 0 else 0
    if acc > 0 and nov > 0:
        return "dominates"
    if acc < 0 or nov < 0:
        return "trade-off" if (acc > 0 or nov > 0) else "worse"
    return "more novel" if nov > 0 else "more accurate" if acc > 0 else "tie"
