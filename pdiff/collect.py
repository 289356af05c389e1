"""Train a source model, then train only the subset and save K snapshots of it."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .config import CollectConfig, TrainConfig  # their home: pdiff.config
from .data import Dataset, Split
from .evaluate import BatchedEvaluator, Scores, family_stats
from .health import MAX_ACC_DROP, Health, collection_health
from .subset import ParameterSubset

__all__ = ["TrainConfig", "CollectConfig", "Collection", "train_source", "collect_snapshots", "accuracy"]

Log = Callable[[str], None]
Wrap = Callable[[nn.Module], nn.Module]
State = dict  # everything a run needs to continue exactly where it stopped (see train_source)
SaveState = Callable[[State], None]


@dataclass(frozen=True)
class Collection:
    """A trained source model and the K snapshots of its subset."""

    model: nn.Module
    subset: ParameterSubset
    test_acc: float  # the source model itself, in [0, 1]
    snapshots: torch.Tensor  # (K, n_subset) float32
    scores: Scores  # of each snapshot
    seconds: float
    source_scores: Scores | None = None  # of the source's own subset (the collection's start), one row
    losses: tuple[float, ...] = ()  # each collection step's training loss

    def health(self, max_acc_drop: float = MAX_ACC_DROP) -> Health:
        """Are these snapshots fit for stage 2 (`pdiff.health`)?"""
        family = family_stats(self.snapshots, self.scores.test_wrong, self.snapshots)
        return collection_health(float(self.source_scores.val_acc[0]), self.scores.val_acc.tolist(), self.losses,
                                 family["pairwise_iou"], family["distinct_sets"], max_acc_drop=max_acc_drop)


def _optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; known: sgd, adamw")


def _fast_path(model: nn.Module) -> tuple[torch.device, bool]:
    """The model's device, and whether the CUDA fast path applies: bf16 autocast, channels_last,
    cuDNN autotuning. Elsewhere training stays plain float32 (deterministic under a seed)."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        model.to(memory_format=torch.channels_last)  # 4-D weights only; a no-op for the rest
    return device, cuda


def _autocast(cuda: bool):
    return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()


def _on_device(split: Split, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images and labels moved to `device` once (not batch by batch)."""
    x = split.x.to(device)
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, split.y.to(device)


def _augment_generator(device: torch.device, seed: int, rank: int) -> torch.Generator:
    # Apart from the batch order's generator, which every DDP rank must share; each rank
    # draws its own crops and flips.
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + 7_919 * (rank + 1)) % 2**63)


def _rng_state(device: torch.device, **gens: torch.Generator) -> dict:
    """Every random state a loop draws from: its own generators and torch's global ones
    (dropout, stochastic depth)."""
    state = {name: g.get_state() for name, g in gens.items()} | {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device, **gens: torch.Generator) -> None:
    for name, g in gens.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _reflect(i: torch.Tensor, size: int) -> torch.Tensor:
    """Indices shifted past an edge, mirrored back as F.pad(mode="reflect") does (-1 -> 1, size -> size - 2)."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per-image random crop with 4 px reflect padding (images >= 28 px) and horizontal flip
    (colour images), batched: one gather on x's device, random draws from `gen` (on that device)."""
    n, c, h, w = x.shape
    crop, flip = h >= 28, c == 3  # flips would turn digits into other glyphs: colour images only
    if not (crop or flip):
        return x
    dev = x.device
    rows = torch.arange(h, device=dev).expand(n, h)
    cols = torch.arange(w, device=dev).expand(n, w)
    if crop:
        shift = torch.randint(-4, 5, (2, n, 1), generator=gen, device=dev)
        rows, cols = _reflect(rows + shift[0], h), _reflect(cols + shift[1], w)
    if flip:
        cols = torch.where(torch.rand(n, 1, generator=gen, device=dev) < 0.5, cols.flip(-1), cols)
    index = (rows[:, :, None] * w + cols[:, None, :]).reshape(n, h * w)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        # Gather whole pixels in the NHWC layout; the result is channels_last again.
        pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        return pixels.gather(1, index[:, :, None].expand(n, h * w, c)).view(n, h, w, c).permute(0, 3, 1, 2)
    return x.reshape(n, c, h * w).gather(2, index[:, None, :].expand(n, c, h * w)).view(n, c, h, w)


def _batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, gen: torch.Generator, rank: int,
             world_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled mini-batches of (x, y), indexed on their device with an order drawn
    there from `gen` (no host round trip); each rank takes every world_size-th batch."""
    order = torch.randperm(len(y), generator=gen, device=y.device)
    starts = range(0, len(order), batch_size)
    for b, start in enumerate(starts):
        if b % world_size == rank:
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]


@torch.no_grad()
def accuracy(model: nn.Module, split: Split, batch_size: int = 512) -> float:
    model.eval()
    device = next(model.parameters()).device
    x, y = split.x.to(device), split.y.to(device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for s in range(0, len(y), batch_size):  # counted on the device, read once
        correct += (model(x[s:s + batch_size]).argmax(-1) == y[s:s + batch_size]).sum()
    return int(correct) / len(y)


def train_source(model: nn.Module, data: Dataset, cfg: TrainConfig, *, seed: int,
                 log: Log = print, log_every: int = 1, wrap: Wrap | None = None, rank: int = 0,
                 world_size: int = 1, on_epoch: Callable[[int, float, float], None] | None = None,
                 save_state: SaveState | None = None, resume: State | None = None) -> float:
    """Train every parameter of `model` on data.train; returns its test accuracy.

    `wrap` (e.g. DistributedDataParallel) is applied to the model for the
    forward / backward passes; `rank` / `world_size` shard the batches.

    The training split moves to the model's device once; batch order, crops and
    flips are drawn there. Nothing is read back inside an epoch: the loss is
    summed on the device and read when an epoch is logged (every `log_every`), or
    every epoch when `on_epoch(epoch, mean loss, seconds)` is given. On CUDA the
    forward pass runs under bf16 autocast with channels_last weights and inputs;
    elsewhere it is float32 and a seed gives the same model.

    `save_state(state)` is called after every epoch with what continuing needs (the
    epochs done, weights, optimiser, schedule and every RNG state, as live tensors:
    write or copy them before returning); `resume=state` continues from such a state
    into `model` as built for a fresh run. On CPU a resumed run ends with exactly the
    model of an uninterrupted one; on CUDA only up to its nondeterministic kernels
    (cuDNN autotuning, atomic adds), as two uninterrupted CUDA runs differ too.
    """
    device, cuda = _fast_path(model)
    x_train, y_train = _on_device(data.train, device, channels_last=cuda)
    gen = torch.Generator(device=device).manual_seed(seed)  # batch order: the same on every rank
    aug_gen = _augment_generator(device, seed, rank)
    if resume is not None:
        model.load_state_dict(resume["model"])
    net = wrap(model) if wrap else model
    opt = _optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size / world_size)
    total = max(1, cfg.epochs * steps_per_epoch)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, total) if cfg.schedule == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    start = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        _set_rng_state(resume["rng"], device, batches=gen, augment=aug_gen)
        start = resume["epoch"]
    for epoch in range(start, cfg.epochs):
        model.train()
        t0, loss_sum, n = time.perf_counter(), torch.zeros((), device=device), 0
        for x, y in _batches(x_train, y_train, cfg.batch_size, gen, rank, world_size):
            if cfg.augment:
                x = _augment(x, aug_gen)
            with _autocast(cuda):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach() * len(y)
            n += len(y)
        logged = (epoch + 1) % log_every == 0 or epoch + 1 == cfg.epochs
        if logged or on_epoch:
            mean_loss = float(loss_sum) / max(n, 1)  # the epoch's one device sync
            seconds = time.perf_counter() - t0
            if on_epoch:
                on_epoch(epoch, mean_loss, seconds)
            if logged:
                log(f"source epoch {epoch + 1}/{cfg.epochs}: loss {mean_loss:.4f}, "
                    f"val acc {100 * accuracy(model, data.val):.2f}% ({seconds:.1f}s)")
        if save_state:
            save_state({"epoch": epoch + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "rng": _rng_state(device, batches=gen, augment=aug_gen)})
    return accuracy(model, data.test)


def collect_snapshots(model: nn.Module, subset: ParameterSubset, data: Dataset, cfg: CollectConfig, *,
                      seed: int, batch_size: int = 128, log: Log = print, wrap: Wrap | None = None,
                      rank: int = 0, world_size: int = 1, save_state: SaveState | None = None,
                      resume: State | None = None, losses: list[float] | None = None) -> torch.Tensor:
    """Keep training only the subset and return K snapshots of it, (K, n_subset) float32.

    `losses`, when given, receives each collection step's training loss (since the last resume), for
    the stage-1 health check (`pdiff.health`).

    With `cfg.batchnorm == "eval"` (the default) the network stays in eval mode
    while the subset trains: BatchNorm running statistics are frozen, so every
    snapshot pairs with the same buffers that evaluation later uses. With "train"
    BatchNorm normalises with batch statistics and its buffers drift (the
    official code); the model returns in eval mode with the final buffers, which
    then score every snapshot alike.

    As in `train_source`, the split moves to the device once, the batch order is
    drawn there, and on CUDA the forward pass runs under bf16 autocast with
    channels_last. Snapshots stay on the device until all K are taken.

    `save_state` / `resume` work as in `train_source`, per pass over the data (the
    state holds the snapshots so far); `resume` loads the whole model.
    """
    device, cuda = _fast_path(model)
    x_train, y_train = _on_device(data.train, device, channels_last=cuda)
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    if resume is not None:
        model.load_state_dict(resume["model"])
    subset.freeze_others(model)
    net = wrap(model) if wrap else model
    params = [p for p in model.parameters() if p.requires_grad]
    named = dict(model.named_parameters())
    subset_params = [named[n] for n in subset.names]  # subset.flatten's order, without its copy to the host
    opt = _optimizer(cfg.optimizer, params, cfg.lr, 0.0)
    snapshots: list[torch.Tensor] = []
    step = epoch = 0
    if resume is not None:
        opt.load_state_dict(resume["optimizer"])
        _set_rng_state(resume["rng"], device, batches=gen)
        snapshots = [s.to(device) for s in resume["snapshots"]]
        step, epoch = resume["step"], resume["epoch"]
    model.train(cfg.batchnorm == "train")  # only BatchNorm (and dropout) differ between the modes
    step_losses: list[torch.Tensor] = []  # on the device: one copy to the host at the end

    def take(count: int) -> None:
        if count % cfg.interval == 0 and len(snapshots) < cfg.k:
            snapshots.append(torch.cat([p.detach().reshape(-1).float() for p in subset_params]))
            if len(snapshots) % max(1, cfg.k // 4) == 0:
                log(f"collected {len(snapshots)}/{cfg.k} snapshots after {step} steps")

    while len(snapshots) < cfg.k:
        for x, y in _batches(x_train, y_train, batch_size, gen, rank, world_size):
            with _autocast(cuda):
                loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if losses is not None:
                step_losses.append(loss.detach().float())
            if cfg.unit == "step":
                take(step)
            if len(snapshots) == cfg.k:
                break
        epoch += 1
        if cfg.unit == "epoch":
            take(epoch)
        if save_state and len(snapshots) < cfg.k:
            save_state({"epoch": epoch, "step": step, "snapshots": list(snapshots), "model": model.state_dict(),
                        "optimizer": opt.state_dict(), "rng": _rng_state(device, batches=gen)})
    if losses is not None and step_losses:
        losses.extend(torch.stack(step_losses).cpu().tolist())
    model.eval()
    return torch.stack(snapshots).cpu()


def collect(arch_model: nn.Module, subset: ParameterSubset, data: Dataset, train: TrainConfig,
            collect_cfg: CollectConfig, *, seed: int, log: Log = print) -> Collection:
    """The whole of stage 1 on one process: train, collect, score every snapshot."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    test_acc = train_source(arch_model, data, train, seed=seed, log=log)
    evaluator = BatchedEvaluator(arch_model, subset)
    source_scores = evaluator.score(subset.flatten(arch_model)[None], data)
    losses: list[float] = []
    snapshots = collect_snapshots(arch_model, subset, data, collect_cfg, seed=seed,
                                  batch_size=train.batch_size, log=log, losses=losses)
    scores = evaluator.score(snapshots, data)
    return Collection(arch_model, subset, test_acc, snapshots, scores, time.perf_counter() - t0,
                      source_scores, tuple(losses))
