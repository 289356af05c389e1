"""Stage 2 on one process: snapshots -> autoencoder -> latent DDPM -> N generated, scored vectors."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .autoencoder import AEConfig, train_autoencoder
from .baselines import BASELINES
from .data import Dataset
from .diffusion import SAMPLERS, LDMConfig, train_diffusion
from .evaluate import BatchedEvaluator, Scores, novelty, summarize

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
    "ae_batch_size": ("ae", "batch_size"), "ldm_steps": ("ldm", "steps"), "ldm_lr": ("ldm", "lr"),
    "ldm_batch_size": ("ldm", "batch_size"), "ema_decay": ("ldm", "ema_decay"),
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
    """A set of parameter vectors, scored and compared with the training snapshots."""

    vectors: torch.Tensor
    scores: Scores
    max_iou: torch.Tensor  # (N,) max IoU of wrong-prediction sets to any snapshot
    nearest_l2: torch.Tensor  # (N,) distance to the nearest snapshot
    summary: dict[str, float] = field(default_factory=dict)


@dataclass
class PdiffRun:
    generated: Assessment
    ae_loss: float
    ldm_loss: float
    seconds: dict[str, float]


def assess(evaluator: BatchedEvaluator, data: Dataset, vectors: torch.Tensor,
           snapshots: torch.Tensor, snapshot_scores: Scores) -> Assessment:
    scores = evaluator.score(vectors, data)
    max_iou, nearest_l2 = novelty(vectors, scores, snapshots, snapshot_scores)
    summary = summarize(scores) | {"mean_max_iou": float(max_iou.mean())}
    return Assessment(vectors, scores, max_iou, nearest_l2, summary)


def _tail_mean(losses: list[float], n: int = 20) -> float:
    return float(sum(losses[-n:]) / max(1, len(losses[-n:])))


def run_pdiff(snapshots: torch.Tensor, evaluator: BatchedEvaluator, data: Dataset, snapshot_scores: Scores,
              cfg: PdiffConfig = PdiffConfig(), *, seed: int = 0, device: torch.device | str = "cpu",
              on_step: Callable[[str, int, float], None] | None = None, probes: int = 0,
              on_probe: Callable[[str, int, float], None] | None = None) -> PdiffRun:
    """Train the autoencoder and the latent DDPM on `snapshots`, generate and score N vectors.

    `on_step(phase, step, loss)` sees every training step of phase "ae" and "ldm".
    With `probes` > 0, `on_probe(phase, step, val_acc)` is called at that many
    evenly spaced steps of each phase with the mean validation accuracy of what
    the model would produce then: reconstructed snapshots during "ae", decoded
    quick DDIM samples during "ldm". It is a learning curve for early stopping
    on the same scale as the final objective, and never looks at the test split.
    """
    seconds = {}
    probe_gen = torch.Generator().manual_seed(seed + 3)
    probe_val = lambda vectors: float((evaluator.predictions(vectors, data.val) == data.val.y).float().mean())  # noqa: E731

    def steps_of(total: int) -> set[int]:
        return {round(total * (i + 1) / (probes + 1)) - 1 for i in range(probes)} if on_probe else set()

    t0 = time.perf_counter()
    ae = train_autoencoder(
        snapshots, cfg.ae, seed=seed, device=device,
        on_step=on_step and (lambda s, l: on_step("ae", s, l)),
        probe=lambda s, trained: on_probe("ae", s, probe_val(trained.decode(trained.encode(snapshots[:16])))),
        probe_steps=steps_of(cfg.ae.steps))
    seconds["ae"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    latents = ae.encode(snapshots)
    ldm = train_diffusion(
        latents, cfg.ldm, seed=seed,
        on_step=on_step and (lambda s, l: on_step("ldm", s, l)),
        probe=lambda s, m: on_probe("ldm", s, probe_val(ae.decode(
            m.sample(16, sampler="ddim", steps=10, generator=probe_gen)))),
        probe_steps=steps_of(cfg.ldm.steps))
    seconds["ldm"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed + 2)
    vectors = ae.decode(ldm.sample(cfg.n_generated, sampler=cfg.sampler, steps=cfg.sample_steps, generator=gen))
    seconds["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    generated = assess(evaluator, data, vectors, snapshots, snapshot_scores)
    seconds["evaluate"] = time.perf_counter() - t0
    return PdiffRun(generated, _tail_mean(ae.losses), _tail_mean(ldm.losses), seconds)


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

