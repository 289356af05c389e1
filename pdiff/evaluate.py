"""Evaluate many parameter vectors of one network at once.

The network is cut into a frozen prefix (everything before the first module that
holds a generated parameter) and a suffix. For each batch of images the prefix
runs once; the suffix runs for all N vectors together under `torch.func.vmap`.

Similarity between two models is the IoU of the sets of test examples each gets
wrong (the paper's measure); novelty of a generated model is its maximum IoU to
any training snapshot (lower = more novel) and its L2 distance to the nearest one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn
from torch.func import functional_call, vmap

from .data import Dataset, Split
from .subset import ParameterSubset

__all__ = ["BatchedEvaluator", "Scores", "COLLAPSE_IOU", "COLLAPSE_SPREAD", "family_stats", "iou_matrix",
           "novelty", "spread", "summarize"]

# A family of models is collapsed (N copies of one model) when its members make the
# same mistakes or barely differ in parameter space compared with the snapshots.
COLLAPSE_IOU = 0.99  # mean pairwise IoU of wrong-prediction sets at or above this
COLLAPSE_SPREAD = 0.05  # spread relative to the snapshots' below this


def _chain(module: nn.Module, qualname: str = "") -> Iterator[tuple[str, nn.Module]]:
    """The forward chain of nested nn.Sequential containers, as (qualified name, module)."""
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            yield from _chain(child, f"{qualname}.{name}" if qualname else name)
    else:
        yield qualname, module


@dataclass(frozen=True)
class Scores:
    """Per-vector results on one dataset's val and test splits."""

    val_acc: torch.Tensor  # (N,) in [0, 1]
    test_acc: torch.Tensor  # (N,)
    test_wrong: torch.Tensor  # (N, n_test) bool: the examples each vector gets wrong
    val_wrong: torch.Tensor | None = None  # (N, n_val) bool, for novelty measured without the test split


class BatchedEvaluator:
    """Accuracy of N subset vectors of one frozen network, the shared prefix computed once."""

    def __init__(self, model: nn.Module, subset: ParameterSubset, *, batch_size: int = 256,
                 vectors_per_pass: int = 50, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.subset = subset
        self.batch_size = batch_size
        self.vectors_per_pass = vectors_per_pass
        chain = list(_chain(self.model))
        owns = [any(n == q or n.startswith(q + ".") or q == "" for n in subset.names) for q, _ in chain]
        cut = owns.index(True)
        self.prefix = [m for _, m in chain[:cut]]
        # Each suffix step: (module, {local parameter name: subset name}).
        self.suffix = []
        for q, m in chain[cut:]:
            local = {(n[len(q) + 1:] if q else n): n for n in subset.names if q == "" or n.startswith(q + ".")}
            self.suffix.append((m, local))

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen prefix's output: shared by every vector."""
        for m in self.prefix:
            x = m(x)
        return x

    def _suffix(self, params: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        for module, local in self.suffix:
            h = functional_call(module, {ln: params[n] for ln, n in local.items()}, (h,)) if local else module(h)
        return h

    @torch.no_grad()
    def logits(self, vectors: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, n, classes) of every vector on every input."""
        vectors = vectors.to(self.device, torch.float32)
        out = []
        for start in range(0, len(x), self.batch_size):
            h = self.features(x[start:start + self.batch_size].to(self.device))
            per_batch = []
            for v in vectors.split(self.vectors_per_pass):
                params = self.subset.unflatten(v)
                per_batch.append(vmap(self._suffix, in_dims=(0, None))(params, h))
            out.append(torch.cat(per_batch))
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def predictions(self, vectors: torch.Tensor, split: Split) -> torch.Tensor:
        """Predicted class (N, n) of every vector on every example of a split."""
        vectors = vectors.to(self.device, torch.float32)
        preds = []
        for start in range(0, len(split), self.batch_size):
            h = self.features(split.x[start:start + self.batch_size].to(self.device))
            preds.append(torch.cat([
                vmap(self._suffix, in_dims=(0, None))(self.subset.unflatten(v), h).argmax(-1)
                for v in vectors.split(self.vectors_per_pass)
            ]))
        return torch.cat(preds, dim=1).cpu()

    def score(self, vectors: torch.Tensor, data: Dataset) -> Scores:
        """Val and test accuracy of each vector, and the test examples it gets wrong."""
        val_correct = self.predictions(vectors, data.val) == data.val.y
        test_wrong = self.predictions(vectors, data.test) != data.test.y
        return Scores(val_correct.float().mean(1), 1.0 - test_wrong.float().mean(1), test_wrong, ~val_correct)


def iou_matrix(wrong_a: torch.Tensor, wrong_b: torch.Tensor) -> torch.Tensor:
    """IoU (Na, Nb) of the wrong-prediction sets of two groups of models.

    Two models that make no mistakes at all have identical (empty) sets: IoU 1.
    """
    a, b = wrong_a.float(), wrong_b.float()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1) - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))


def novelty(gen_vectors: torch.Tensor, gen: Scores, train_vectors: torch.Tensor, train: Scores
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per generated vector: max IoU to any training snapshot, and L2 distance to the nearest one."""
    max_iou = iou_matrix(gen.test_wrong, train.test_wrong).max(dim=1).values
    # The direct (non-matmul) distance: the matmul shortcut cdist takes for more than 25
    # rows puts an exact copy of a snapshot at ~1e-3 instead of 0.
    nearest_l2 = torch.cdist(gen_vectors.float(), train_vectors.float(),
                             compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    return max_iou, nearest_l2


def summarize(scores: Scores) -> dict[str, float]:
    """Best / mean / median test accuracy, in percent.

    `selected_acc` is the test accuracy of the vector with the best *validation*
    accuracy (our protocol). `best_test_acc` is the best test accuracy, chosen on
    the test set itself: the paper's number, optimistic by construction.
    """
    selected = int(torch.argmax(scores.val_acc))
    test = scores.test_acc * 100
    return {
        "selected_acc": float(test[selected]),
        "best_test_acc": float(test.max()),
        "mean_acc": float(test.mean()),
        "median_acc": float(test.median()),
    }


def spread(vectors: torch.Tensor) -> float:
    """RMS L2 distance of a family's vectors to their centroid."""
    v = vectors.double()
    return float((v - v.mean(0)).pow(2).sum(1).mean().sqrt())


def family_stats(vectors: torch.Tensor, wrong: torch.Tensor, snapshots: torch.Tensor) -> dict[str, float]:
    """Collapse signals of a family of N models (generated, a baseline, or the snapshots themselves).

    `pairwise_iou`: mean IoU of the wrong-prediction sets over distinct pairs (1 = all alike);
    `distinct_sets`: how many different wrong-prediction sets the N models have;
    `spread_ratio`: the family's spread over the snapshots' (1 for the snapshots);
    `collapsed`: pairwise IoU >= COLLAPSE_IOU or spread ratio < COLLAPSE_SPREAD.
    """
    n = len(wrong)
    iou = iou_matrix(wrong, wrong)
    pairwise = float((iou.sum() - iou.diagonal().sum()) / (n * (n - 1))) if n > 1 else 1.0
    ratio = spread(vectors) / max(spread(snapshots), 1e-30)
    return {"pairwise_iou": pairwise, "distinct_sets": int(torch.unique(wrong, dim=0).shape[0]),
            "spread_ratio": ratio, "collapsed": bool(pairwise >= COLLAPSE_IOU or ratio < COLLAPSE_SPREAD)}
