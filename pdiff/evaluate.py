"""Evaluate many parameter vectors of one network at once.

The network is cut into a frozen prefix (everything before the first module that
holds a generated parameter) and a suffix. For each batch of images the prefix
runs once; the suffix runs for all N vectors together under `torch.func.vmap`.

Similarity between two models is the IoU of the sets of examples each gets
wrong (the paper's measure, on the test split; here on val too). The novelty of a
generated model is its maximum IoU to any training snapshot, `test_max_iou` and
`val_max_iou` (lower = more novel, 1 = the same mistakes as some snapshot), and its
L2 distance to the nearest one. A wrong-prediction set is stored as packed bits
(`pack_wrong` / `unpack_wrong`), so similarity can be recomputed without a network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from .data import Dataset, Split
from .verdicts import COLLAPSE_IOU, COLLAPSE_SPREAD, is_collapsed
from .subset import ParameterSubset

__all__ = ["BatchedEvaluator", "Scores", "Novelty", "COLLAPSE_IOU", "COLLAPSE_SPREAD", "family_stats",
           "iou_matrix", "max_iou", "novelty", "pack_wrong", "unpack_wrong", "unpack_wrong_rows", "spread",
           "summarize"]

# COLLAPSE_IOU / COLLAPSE_SPREAD and every verdict live in pdiff.verdicts, which the table readers
# import without torch.


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


# -- wrong-prediction sets as bytes --------------------------------------------------------------
# Bit i of a packed set is example i of the split (in the split's fixed order), most significant bit
# first within each byte (numpy.packbits' "big" order); the last byte is padded with zero bits.


def pack_wrong(mask: torch.Tensor | np.ndarray) -> bytes:
    """One model's wrong-prediction set over a split's n examples, (n,) bool, as ceil(n / 8) bytes."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if mask.ndim != 1:
        raise ValueError(f"pack_wrong takes one model's (n,) mask, got shape {tuple(mask.shape)}")
    return np.packbits(mask.astype(bool), bitorder="big").tobytes()


def unpack_wrong(blob: bytes, n: int) -> torch.Tensor:
    """The (n,) bool wrong-prediction set packed by `pack_wrong`."""
    if len(blob) != (n + 7) // 8:
        raise ValueError(f"a packed set of {n} examples has {(n + 7) // 8} bytes, got {len(blob)}")
    bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8), count=n, bitorder="big")
    return torch.from_numpy(bits.astype(bool))


def unpack_wrong_rows(blobs, n: int) -> torch.Tensor:
    """(N, n) bool: the packed sets of N models over the same split."""
    blobs = list(blobs)
    if not blobs:
        return torch.zeros(0, n, dtype=torch.bool)
    size = (n + 7) // 8
    bad = next((b for b in blobs if len(b) != size), None)
    if bad is not None:
        unpack_wrong(bad, n)  # raises, naming the sizes
    # One unpack for all N (a report unpacks 100,000 sets: one call each took a second).
    packed = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), size)
    return torch.from_numpy(np.unpackbits(packed, axis=1, count=n, bitorder="big").astype(bool))


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


def paired_iou(wrong_a: torch.Tensor, wrong_b: torch.Tensor) -> torch.Tensor:
    """(N,) IoU of the wrong-prediction sets of model i of `wrong_a` and model i of `wrong_b`
    (e.g. a reconstruction and its own snapshot); two empty sets: IoU 1."""
    inter = (wrong_a & wrong_b).sum(1)
    union = (wrong_a | wrong_b).sum(1)
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter, dtype=torch.float32))


def max_iou(wrong: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) the max IoU of each model's wrong-prediction set to any of `reference`'s (lower = more novel).

    Without `reference`, to the *other* models of `wrong` itself (a snapshot's novelty among the
    snapshots: to itself it is 1 by definition); NaN for a family of one.
    """
    if reference is not None:
        return iou_matrix(wrong, reference).max(dim=1).values
    iou = iou_matrix(wrong, wrong)
    if len(iou) < 2:
        return torch.full((len(iou),), float("nan"))
    return iou.fill_diagonal_(-1.0).max(dim=1).values


@dataclass(frozen=True)
class Novelty:
    """Per generated vector: how far it is from the training snapshots."""

    test_max_iou: torch.Tensor  # (N,) max IoU of its test wrong-prediction set to any snapshot's
    val_max_iou: torch.Tensor  # (N,) the same on the validation split (what a search may optimise)
    nearest_l2: torch.Tensor  # (N,) L2 distance to the nearest snapshot in parameter space


def novelty(gen_vectors: torch.Tensor, gen: Scores, train_vectors: torch.Tensor, train: Scores) -> Novelty:
    """Per generated vector: max IoU to any training snapshot on test and on val, and L2 distance to
    the nearest one. The val column is NaN where either side has no val sets."""
    test = max_iou(gen.test_wrong, train.test_wrong)
    if gen.val_wrong is not None and train.val_wrong is not None:
        val = max_iou(gen.val_wrong, train.val_wrong)
    else:
        val = torch.full_like(test, float("nan"))
    # The direct (non-matmul) distance: the matmul shortcut cdist takes for more than 25
    # rows puts an exact copy of a snapshot at ~1e-3 instead of 0.
    nearest_l2 = torch.cdist(gen_vectors.float(), train_vectors.float(),
                             compute_mode="donot_use_mm_for_euclid_dist").min(dim=1).values
    return Novelty(test, val, nearest_l2)


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
            "spread_ratio": ratio, "collapsed": is_collapsed(pairwise, ratio)}
