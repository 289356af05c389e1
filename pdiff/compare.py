"""Two families of models compared with 95% intervals, and the snapshots' own novelty reference.

The splits are small (digits' test split has 360 examples): a difference of one or two test examples
is noise. `compare_families` bootstraps the difference A - B of the families' mean test accuracy and of
their mean max-IoU to the snapshots, resampling test examples (the same resample for both families:
paired) and, independently, each family's models. Per resample the max-IoU of a model is taken to the
snapshot that is its nearest on the full split (recomputing the argmax per resample would cost K times
more; both families are treated alike). `pdiff.verdicts.comparison` words the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .evaluate import iou_matrix, max_iou
from .verdicts import comparison, family_verdict

__all__ = ["Comparison", "compare_families", "leave_one_out", "judge", "RESAMPLES"]

RESAMPLES = 1000


@dataclass(frozen=True)
class Comparison:
    """Family A minus family B: mean test accuracy in percentage points, mean max-IoU to the snapshots
    (negative = A more novel), each with its 95% bootstrap interval, and the verdict's word."""

    acc_diff: float
    acc_lo: float
    acc_hi: float
    iou_diff: float
    iou_lo: float
    iou_hi: float

    @property
    def word(self) -> str | None:
        return comparison(self.acc_lo, self.acc_hi, self.iou_lo, self.iou_hi)

    def columns(self, prefix: str) -> dict[str, float | str | None]:
        """As table columns: `{prefix}_acc_diff`, `_acc_lo`, `_acc_hi`, `_iou_diff`, `_iou_lo`, `_iou_hi`, `{prefix}`."""
        parts = ("acc_diff", "acc_lo", "acc_hi", "iou_diff", "iou_lo", "iou_hi")
        return {f"{prefix}_{k}": getattr(self, k) for k in parts} | {prefix: self.word}


def _per_model(wrong: torch.Tensor, snapshot_wrong: torch.Tensor,
               weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, R) test accuracy and IoU to the nearest snapshot of each model under R example weightings."""
    w = weights.T  # (n, R)
    nearest = snapshot_wrong[iou_matrix(wrong, snapshot_wrong).argmax(1)]
    inter = (wrong & nearest).float() @ w
    union = (wrong | nearest).float() @ w
    iou = torch.where(union > 0, inter / union.clamp(min=1e-12), torch.ones_like(inter))
    acc = 1.0 - wrong.float() @ w / weights.sum(1)
    return acc, iou


def compare_families(wrong_a: torch.Tensor, wrong_b: torch.Tensor, snapshot_wrong: torch.Tensor, *,
                     resamples: int = RESAMPLES, seed: int = 0) -> Comparison:
    """A - B from the (N, n_test) bool wrong-prediction sets of two families and the (K, n_test) snapshots'."""
    gen = torch.Generator().manual_seed(seed)
    n = wrong_a.shape[1]
    if wrong_b.shape[1] != n or snapshot_wrong.shape[1] != n:
        raise ValueError(f"the families' sets cover {n}, {wrong_b.shape[1]} and {snapshot_wrong.shape[1]} examples")
    wrong_a, wrong_b, snapshot_wrong = wrong_a.bool(), wrong_b.bool(), snapshot_wrong.bool()
    ones = torch.ones(1, n)
    acc_a, iou_a = (x[:, 0] for x in _per_model(wrong_a, snapshot_wrong, ones))
    acc_b, iou_b = (x[:, 0] for x in _per_model(wrong_b, snapshot_wrong, ones))
    examples = torch.multinomial(torch.full((n,), 1.0 / n), n * resamples, replacement=True, generator=gen)
    weights = torch.zeros(resamples, n).scatter_add_(
        1, examples.view(resamples, n), torch.ones(resamples, n))  # (R, n) counts: a resample of the split

    def family_means(wrong: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        acc, iou = _per_model(wrong, snapshot_wrong, weights)  # (N, R)
        pick = torch.randint(0, len(wrong), (len(wrong), resamples), generator=gen)  # a resample of the family
        return acc.gather(0, pick).mean(0), iou.gather(0, pick).mean(0)

    (ra, ia), (rb, ib) = family_means(wrong_a), family_means(wrong_b)
    acc_d, iou_d = 100 * (ra - rb), ia - ib
    q = torch.tensor([0.025, 0.975], dtype=acc_d.dtype)
    (alo, ahi), (ilo, ihi) = acc_d.quantile(q).tolist(), iou_d.quantile(q).tolist()
    return Comparison(float(100 * (acc_a.mean() - acc_b.mean())), alo, ahi,
                      float(iou_a.mean() - iou_b.mean()), ilo, ihi)


def leave_one_out(snapshots: torch.Tensor, test_wrong: torch.Tensor, val_wrong: torch.Tensor | None = None
                  ) -> dict[str, float]:
    """The snapshots' own novelty: each snapshot's max-IoU (test, val) and L2 distance to the *other*
    snapshots, averaged. A generated family at or above the test figure is memorising (`pdiff.verdicts`)."""
    d = torch.cdist(snapshots.double(), snapshots.double(), compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    nearest = d.min(1).values if len(snapshots) > 1 else torch.full((len(snapshots),), float("nan"))
    out = {"snapshot_loo_max_iou": float(max_iou(test_wrong).mean()),
           "snapshot_loo_l2": float(nearest.mean())}
    out["snapshot_loo_val_max_iou"] = float(max_iou(val_wrong).mean()) if val_wrong is not None else float("nan")
    return out


def judge(family, references: dict, snapshot_test_wrong: torch.Tensor, snapshot_loo_max_iou: float, *,
          seed: int = 0) -> dict[str, float | str | None]:
    """A p-diff family's verdict and its comparison with each reference family (`pdiff.pipeline.Assessment`s:
    the baselines, `latent_gaussian`), as the trials table's columns: `verdict`, `vs_<name>` and its
    intervals (`Comparison.columns`), and the latent Gaussian's own accuracy, novelty and verdict."""
    s = family.summary
    cols: dict[str, float | str | None] = {
        "verdict": family_verdict(s["collapsed"], s["test_max_iou"], snapshot_loo_max_iou),
        "snapshot_loo_max_iou": snapshot_loo_max_iou}
    for name, ref in references.items():
        cols |= compare_families(family.scores.test_wrong, ref.scores.test_wrong, snapshot_test_wrong,
                                 seed=seed).columns(f"vs_{name}")
    if "latent_gaussian" in references:
        r = references["latent_gaussian"].summary
        cols |= {"latent_gaussian_mean_acc": r["mean_acc"], "latent_gaussian_test_max_iou": r["test_max_iou"],
                 "latent_gaussian_verdict": family_verdict(r["collapsed"], r["test_max_iou"], snapshot_loo_max_iou)}
    return cols
