"""The memorisation baselines of Zeng et al. 2025 (arXiv 2506.07998).

Each draws new parameter vectors from the K training snapshots without any
learning. If p-diff does not beat them on the accuracy-vs-novelty plane, it has
learnt nothing beyond the snapshots themselves.
"""

from __future__ import annotations

from typing import Callable

import torch

from .names import LABELS, METHODS

__all__ = ["BASELINES", "LABELS", "snapshot_noise", "snapshot_average", "coordinate_gaussian"]


def snapshot_noise(snapshots: torch.Tensor, n: int, gen: torch.Generator, *, sigma: float = 0.01) -> torch.Tensor:
    """A random snapshot plus isotropic Gaussian noise of standard deviation `sigma`."""
    pick = torch.randint(0, len(snapshots), (n,), generator=gen)
    return snapshots[pick] + sigma * torch.randn((n, snapshots.shape[1]), generator=gen)


def snapshot_average(snapshots: torch.Tensor, n: int, gen: torch.Generator, *, m: int = 16) -> torch.Tensor:
    """The mean of `m` snapshots drawn without replacement (all of them if K < m)."""
    m = min(m, len(snapshots))
    picks = torch.stack([torch.randperm(len(snapshots), generator=gen)[:m] for _ in range(n)])
    return snapshots[picks].mean(1)


def coordinate_gaussian(snapshots: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """Independent per-coordinate Gaussians fitted to the snapshots (mean and std of each entry)."""
    mean, std = snapshots.mean(0), snapshots.std(0)
    return mean + std * torch.randn((n, snapshots.shape[1]), generator=gen)


BASELINES: dict[str, Callable[..., torch.Tensor]] = {
    "noise": snapshot_noise,
    "average": snapshot_average,
    "gaussian": coordinate_gaussian,
}

assert tuple(BASELINES) == METHODS, "pdiff.names.METHODS lists the baselines, in this order"
