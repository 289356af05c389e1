"""Stage 2 on one process: snapshots -> autoencoder -> latent DDPM -> N generated, scored vectors."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .autoencoder import AEConfig, train_autoencoder
from .baselines import BASELINES
from .data import Dataset
from .diffusion import SAMPLERS, LDMConfig, train_diffusion
from .evaluate import BatchedEvaluator, Scores, family_stats, novelty, summarize

__all__ = ["PdiffConfig", "Assessment", "PdiffRun", "Diverged", "assess", "run_pdiff", "run_baselines",
           "replace_knobs", "KNOBS"]


class Diverged(RuntimeError):
    """A p-diff run whose losses or generated vectors went non-finite: a failed trial, not a number."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)

# The flat knob names a sweep searches over, and where each one lives.
KNOBS = {
    "latent_dim": ("ae", "latent_dim"), "input_noise": ("ae", "input_noise"),
    "latent_noise": ("ae", "latent_noise"), "ae_steps": ("ae", "steps"), "ae_lr": ("ae", "lr"),
    "ae_min_r2": ("ae", "min_r2"), "normalize": ("ae", "normalize"), "ae_token_size": ("ae", "token_size"),
    "ae_batch_size": ("ae", "batch_size"), "ldm_steps": ("ldm", "steps"), "ldm_lr": ("ldm", "lr"),
    "ldm_batch_size": ("ldm", "batch_size"), "ema_decay": ("ldm", "ema_decay"),
    "ldm_amp": ("ldm", "amp"),
    "ae_channels": ("ae", "channels"), "ldm_channels": ("ldm", "channels"),
    "n_generated": ("", "n_generated"), "sampler": ("", "sampler"), "sample_steps": ("", "sample_steps"),
}


@dataclass(frozen=True)
class PdiffConfig:
    ae: AEConfig = AEConfig()
    ldm: LDMConfig = LDMConfig()
    n_generated: int = 200
    sampler: str = "ddpm"
    sample_steps: int | None = None  # DDIM steps; DDPM always walks all T steps

    @classmethod
    def from_knobs(cls, **knobs: Any) -> "PdiffConfig":
        """Build from flat knob names (`latent_dim=64, ae_steps=500, sampler="ddim"`)."""
        unknown = sorted(set(knobs) - set(KNOBS))
        if unknown:
            raise ValueError(f"unknown p-diff knob(s) {unknown}; known: {', '.join(KNOBS)}")
        parts: dict[str, dict[str, Any]] = {"ae": {}, "ldm": {}, "": {}}
        for name, value in knobs.items():
            part, attr = KNOBS[name]
            value = tuple(value) if isinstance(value, list) else value
            parts[part][attr] = value
        cfg = cls(AEConfig(**parts["ae"]), LDMConfig(**parts["ldm"]), **parts[""])
        if cfg.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {cfg.sampler!r}; known samplers: {', '.join(SAMPLERS)}")
        return cfg

    def knobs(self) -> dict[str, Any]:
        """The flat knob values of this configuration."""
        return {n: getattr(getattr(self, p) if p else self, a) for n, (p, a) in KNOBS.items()}


@dataclass
class Assessment:
    """A family of parameter vectors, scored and compared with the training snapshots."""

    vectors: torch.Tensor
    scores: Scores
    max_iou: torch.Tensor  # (N,) max IoU of wrong-prediction sets to any snapshot
    nearest_l2: torch.Tensor  # (N,) distance to the nearest snapshot
    summary: dict[str, float] = field(default_factory=dict)  # accuracies, novelty and collapse signals


@dataclass
class PdiffRun:
    generated: Assessment
    ae_loss: float
    ldm_loss: float
    seconds: dict[str, float]
    ae_steps: int = 0  # steps the autoencoder took to reach its quality (or its bound)
    ae_r2: float = float("nan")  # reconstruction R2 it reached
    ae_converged: bool = False  # reached min_r2 and the accuracy check within ae_steps


def assess(evaluator: BatchedEvaluator, data: Dataset, vectors: torch.Tensor,
           snapshots: torch.Tensor, snapshot_scores: Scores) -> Assessment:
    scores = evaluator.score(vectors, data)
    max_iou, nearest_l2 = novelty(vectors, scores, snapshots, snapshot_scores)
    summary = (summarize(scores) | {"mean_max_iou": float(max_iou.mean())}
               | family_stats(vectors, scores.test_wrong, snapshots))
    return Assessment(vectors, scores, max_iou, nearest_l2, summary)


def _tail_mean(losses: list[float], n: int = 20) -> float:
    return float(sum(losses[-n:]) / max(1, len(losses[-n:])))


DIVERGENCE_FACTOR = 1e3  # a final loss this many times the first step's (before any update) is divergence


def _finite(losses: list[float], what: str) -> None:
    """Raise `Diverged` when a loss is non-finite or ends `DIVERGENCE_FACTOR` times above where it started."""
    bad = next((i for i, x in enumerate(losses) if not math.isfinite(x)), None)
    if bad is not None:
        raise Diverged(f"{what} loss went non-finite at step {bad} ({losses[bad]})")
    start, end = (losses[0] if losses else 0.0), _tail_mean(losses)
    if losses and end > DIVERGENCE_FACTOR * max(start, 1e-12):
        raise Diverged(f"{what} loss grew from {start:.3g} to {end:.3g} ({end / max(start, 1e-12):.2g}x)")


def run_pdiff(snapshots: torch.Tensor, evaluator: BatchedEvaluator, data: Dataset, snapshot_scores: Scores,
              cfg: PdiffConfig = PdiffConfig(), *, seed: int = 0, device: torch.device | str = "cpu",
              on_step: Callable[[str, int, float], None] | None = None, probes: int = 0,
              on_probe: Callable[[str, int, float], None] | None = None,
              acc_tolerance: float = 0.3) -> PdiffRun:
    """Train the autoencoder and the latent DDPM on `snapshots`, generate and score N vectors.

    The autoencoder trains until its reconstructions of the snapshots reach R2
    `cfg.ae.min_r2` and their mean validation accuracy is no more than
    `acc_tolerance` points below the snapshots' (never the test split), or until
    `cfg.ae.steps`. Raises `Diverged` when a loss or a generated vector is non-finite.

    `on_step(phase, step, loss)` sees training progress of phase "ae" and "ldm".
    With `probes` > 0, `on_probe(phase, step, val_acc)` is called once after the
    autoencoder (reconstructed snapshots) and at `probes` evenly spaced LDM steps
    (decoded quick DDIM samples), with the mean validation accuracy of what the
    model would produce then: a learning curve for early stopping on the same
    scale as the final objective, never looking at the test split.
    """
    seconds = {}
    probe_gen = torch.Generator().manual_seed(seed + 3)
    val_acc = lambda vectors: float((evaluator.predictions(vectors, data.val) == data.val.y).float().mean())  # noqa: E731
    target = float(snapshot_scores.val_acc.mean()) - acc_tolerance / 100

    t0 = time.perf_counter()
    ae = train_autoencoder(
        snapshots, cfg.ae, seed=seed, device=device, segments=evaluator.subset.sizes,
        accept=lambda recon: bool(torch.isfinite(recon).all()) and val_acc(recon) >= target,
        on_step=on_step and (lambda s, l: on_step("ae", s, l)))
    _finite(ae.losses, "autoencoder")
    if on_probe:
        on_probe("ae", ae.steps, val_acc(ae.reconstruct(snapshots[:16])))
    seconds["ae"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    latents = ae.encode(snapshots)
    probe_steps = {round(cfg.ldm.steps * (i + 1) / (probes + 1)) - 1 for i in range(probes)} if on_probe else set()
    ldm = train_diffusion(
        latents, cfg.ldm, seed=seed,
        on_step=on_step and (lambda s, l: on_step("ldm", s, l)),
        probe=lambda s, m: on_probe("ldm", s, val_acc(ae.decode(
            m.sample(16, sampler="ddim", steps=10, generator=probe_gen)))),
        probe_steps=probe_steps)
    _finite(ldm.losses, "latent diffusion")
    seconds["ldm"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 2)
    vectors = ae.decode(ldm.sample(cfg.n_generated, sampler=cfg.sampler, steps=cfg.sample_steps, generator=gen))
    if not torch.isfinite(vectors).all():
        raise Diverged(f"{int((~torch.isfinite(vectors).all(1)).sum())} of {len(vectors)} generated vectors "
                       f"are non-finite")
    seconds["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    generated = assess(evaluator, data, vectors, snapshots, snapshot_scores)
    seconds["evaluate"] = time.perf_counter() - t0
    return PdiffRun(generated, _tail_mean(ae.losses), _tail_mean(ldm.losses), seconds,
                    ae.steps, ae.r2, ae.converged)


def run_baselines(snapshots: torch.Tensor, evaluator: BatchedEvaluator, data: Dataset, snapshot_scores: Scores,
                  n: int, *, seed: int = 0, noise_sigma: float = 0.01) -> dict[str, Assessment]:
    """Every baseline of `pdiff.baselines`, N vectors each, scored exactly like p-diff's."""
    out = {}
    for i, (name, draw) in enumerate(BASELINES.items()):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        kwargs = {"sigma": noise_sigma} if name == "noise" else {}
        out[name] = assess(evaluator, data, draw(snapshots, n, gen, **kwargs), snapshots, snapshot_scores)
    return out


def replace_knobs(cfg: PdiffConfig, **knobs: Any) -> PdiffConfig:
    """A copy of `cfg` with some flat knobs changed."""
    return PdiffConfig.from_knobs(**(cfg.knobs() | knobs))

