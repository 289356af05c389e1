"""Train a source model, then train only the subset and save K snapshots of it."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset, Split
from .evaluate import BatchedEvaluator, Scores
from .subset import ParameterSubset

__all__ = ["TrainConfig", "CollectConfig", "Collection", "train_source", "collect_snapshots", "accuracy"]

Log = Callable[[str], None]
Wrap = Callable[[nn.Module], nn.Module]


@dataclass(frozen=True)
class TrainConfig:
    """How the source model is trained."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.1
    optimizer: str = "sgd"  # "sgd" (momentum 0.9) or "adamw"
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine" or "constant"
    augment: bool = True  # random crops for images >= 28 px, flips for colour images


@dataclass(frozen=True)
class CollectConfig:
    """How the K snapshots of the subset are collected (the paper: K = 200, lr 0.03 on ResNet-18)."""

    k: int = 200
    interval: int = 1  # snapshots every `interval` units
    unit: str = "step"  # "step" or "epoch"
    lr: float = 0.03
    optimizer: str = "sgd"


@dataclass(frozen=True)
class Collection:
    """A trained source model and the K snapshots of its subset."""

    model: nn.Module
    subset: ParameterSubset
    test_acc: float  # the source model itself, in [0, 1]
    snapshots: torch.Tensor  # (K, n_subset) float32
    scores: Scores  # of each snapshot
    seconds: float


def _optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, adamw")


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    if h >= 28:  # random crop with 4 px padding
        pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
        i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
        x = pad[:, :, i:i + h, j:j + w]
    if c == 3:  # flips would turn digits into other glyphs: colour images only
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _batches(split: Split, batch_size: int, gen: torch.Generator, rank: int, world_size: int
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled mini-batches; each rank takes every world_size-th batch."""
    order = torch.randperm(len(split), generator=gen)
    starts = range(0, len(order), batch_size)
    for b, start in enumerate(starts):
        if b % world_size == rank:
            idx = order[start:start + batch_size]
            yield split.x[idx], split.y[idx]


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    model.eval()
    device = next(model.parameters()).device
    correct = sum(
        (model(split.x[s:s + batch_size].to(device)).argmax(-1).cpu() == split.y[s:s + batch_size]).sum().item()
        for s in range(0, len(split), batch_size)
    )
    return correct / len(split)


def train_source(model: nn.Module, data: Dataset, cfg: TrainConfig, *, seed: int,
                 log: Log = print, log_every: int = 1, wrap: Wrap | None = None, rank: int = 0,
                 world_size: int = 1) -> float:
    """Train every parameter of `model` on data.train; returns its test accuracy.

    `wrap` (e.g. DistributedDataParallel) is applied to the model for the
    forward / backward passes; `rank` / `world_size` shard the batches.
    """
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    net = wrap(model) if wrap else model
    opt = _optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size / world_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, total) if cfg.schedule == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    for epoch in range(cfg.epochs):
        model.train()
        t0, loss_sum, n = time.perf_counter(), 0.0, 0
        for x, y in _batches(data.train, cfg.batch_size, gen, rank, world_size):
            if cfg.augment:
                x = _augment(x, gen)
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum, n = loss_sum + loss.item() * len(y), n + len(y)
        if (epoch + 1) % log_every == 0 or epoch + 1 == cfg.epochs:
            log(f"source epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / max(n, 1):.4f}, "
                f"val acc {100 * accuracy(model, data.val):.2f}% ({time.perf_counter() - t0:.1f}s)")
    return accuracy(model, data.test)


def collect_snapshots(model: nn.Module, subset: ParameterSubset, data: Dataset, cfg: CollectConfig, *,
                      seed: int, batch_size: int = 128, log: Log = print, wrap: Wrap | None = None,
                      rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Keep training only the subset and return K snapshots of it, (K, n_subset) float32.

    The network stays in eval mode while the subset trains: BatchNorm running
    statistics are frozen, so every snapshot pairs with the same buffers that
    evaluation later uses (the official code lets them drift and evaluates
    every snapshot with the last ones).
    """
    gen = torch.Generator().manual_seed(seed + 1)
    device = next(model.parameters()).device
    subset.freeze_others(model)
    net = wrap(model) if wrap else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(cfg.optimizer, params, cfg.lr, 0.0)
    snapshots: list[torch.Tensor] = []
    step = epoch = 0
    model.eval()

    def take(count: int) -> None:
        if count % cfg.interval == 0 and len(snapshots) < cfg.k:
            snapshots.append(subset.flatten(model))
            if len(snapshots) % max(1, cfg.k // 4) == 0:
                log(f"collected {len(snapshots)}/{cfg.k} snapshots after {step} steps")

    while len(snapshots) < cfg.k:
        for x, y in _batches(data.train, batch_size, gen, rank, world_size):
            loss = F.cross_entropy(net(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if cfg.unit == "step":
                take(step)
            if len(snapshots) == cfg.k:
                break
        epoch += 1
        if cfg.unit == "epoch":
            take(epoch)
    return torch.stack(snapshots)


def collect(arch_model: nn.Module, subset: ParameterSubset, data: Dataset, train: TrainConfig,
            collect_cfg: CollectConfig, *, seed: int, log: Log = print) -> Collection:
    """The whole of stage 1 on one process: train, collect, score every snapshot."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    test_acc = train_source(arch_model, data, train, seed=seed, log=log)
    snapshots = collect_snapshots(arch_model, subset, data, collect_cfg, seed=seed,
                                  batch_size=train.batch_size, log=log)
    scores = BatchedEvaluator(arch_model, subset).score(snapshots, data)
    return Collection(arch_model, subset, test_acc, snapshots, scores, time.perf_counter() - t0)
