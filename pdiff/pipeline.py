"""Stage 2 on one process: snapshots -> autoencoder -> latent DDPM -> N generated, scored vectors."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from .autoencoder import Normalizer, TrainedAutoencoder, autoencoder_name, build_autoencoder, train_autoencoder
from .baselines import BASELINES
from .config import KNOB_DOCS, KNOBS, AEConfig, LDMConfig, PdiffConfig  # their home: pdiff.config
from .data import Dataset
from .diffusion import LatentDiffusion, train_diffusion
from .health import loss_problem
from .evaluate import BatchedEvaluator, Scores, family_stats, novelty, paired_iou, summarize

__all__ = ["PdiffConfig", "Assessment", "PdiffRun", "Diverged", "assess", "run_pdiff", "run_baselines",
           "latent_gaussian", "reference_families", "replace_knobs", "KNOBS", "KNOB_DOCS", "sample_vectors",
           "generator_state", "restore_generator"]


class Diverged(RuntimeError):
    """A p-diff run whose losses or generated vectors went non-finite: a failed trial, not a number."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


@dataclass
class Assessment:
    """A family of parameter vectors, scored and compared with the training snapshots."""

    vectors: torch.Tensor
    scores: Scores
    test_max_iou: torch.Tensor  # (N,) max IoU of its test wrong-prediction set to any snapshot's
    val_max_iou: torch.Tensor  # (N,) the same on the validation split
    nearest_l2: torch.Tensor  # (N,) distance to the nearest snapshot
    # Accuracies (summarize), novelty (test_max_iou / val_max_iou: the means over the N models) and
    # collapse signals (family_stats).
    summary: dict[str, float] = field(default_factory=dict)


@dataclass
class PdiffRun:
    generated: Assessment
    ae_loss: float
    ldm_loss: float
    seconds: dict[str, float]
    ae_steps: int = 0  # steps the autoencoder took to reach its quality (or its bound)
    ae_r2: float = float("nan")  # reconstruction R2 it reached
    ae_converged: bool = False  # reached min_r2, min_fidelity and the accuracy check within ae_steps
    ae_fidelity: float = float("nan")  # mean val IoU of each reconstruction's mistakes with its snapshot's (last check)
    ae: TrainedAutoencoder | None = None  # the trained models, to draw more vectors (`generator_state`)
    ldm: LatentDiffusion | None = None


def assess(evaluator: BatchedEvaluator, data: Dataset, vectors: torch.Tensor,
           snapshots: torch.Tensor, snapshot_scores: Scores) -> Assessment:
    """Score a family of vectors on val and test and compare it with the snapshots (`Assessment`)."""
    scores = evaluator.score(vectors, data)
    near = novelty(vectors, scores, snapshots, snapshot_scores)
    summary = (summarize(scores)
               | {"test_max_iou": float(near.test_max_iou.mean()), "val_max_iou": float(near.val_max_iou.mean())}
               | family_stats(vectors, scores.test_wrong, snapshots))
    return Assessment(vectors, scores, near.test_max_iou, near.val_max_iou, near.nearest_l2, summary)


def _tail_mean(losses: list[float], n: int = 20) -> float:
    return float(sum(losses[-n:]) / max(1, len(losses[-n:])))


def _finite(losses: list[float], what: str) -> None:
    """Raise `Diverged` when a loss is non-finite or ends `DIVERGENCE_FACTOR` times above where it started."""
    problem = loss_problem(losses, what)
    if problem:
        raise Diverged(problem)


def run_pdiff(snapshots: torch.Tensor, evaluator: BatchedEvaluator, data: Dataset, snapshot_scores: Scores,
              cfg: PdiffConfig = PdiffConfig(), *, seed: int = 0, device: torch.device | str = "cpu",
              on_step: Callable[[str, int, float], None] | None = None, probes: int = 0,
              on_probe: Callable[[str, int, float], None] | None = None,
              acc_tolerance: float = 0.3) -> PdiffRun:
    """Train the autoencoder and the latent DDPM on `snapshots`, generate and score N vectors.

    The autoencoder trains until its reconstructions of the snapshots reach R2
    `cfg.ae.min_r2`, make the mistakes their snapshots make (mean validation IoU of
    each reconstruction's wrong set with its own snapshot's >= `cfg.ae.min_fidelity`),
    and their mean validation accuracy is no more than `acc_tolerance` points below
    the snapshots' (never the test split), or until `cfg.ae.steps`. Raises `Diverged` when a loss or a generated vector is non-finite.

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

    snapshot_val_wrong = (snapshot_scores.val_wrong if snapshot_scores.val_wrong is not None
                          else evaluator.predictions(snapshots, data.val) != data.val.y)
    fidelity = [float("nan")]

    def accept(recon: torch.Tensor) -> bool:  # runs only once R2 is met
        if not torch.isfinite(recon).all():
            return False
        wrong = evaluator.predictions(recon, data.val) != data.val.y
        fidelity[0] = float(paired_iou(wrong, snapshot_val_wrong.to(wrong.device)).mean())
        return float((~wrong).float().mean()) >= target and fidelity[0] >= cfg.ae.min_fidelity

    t0 = time.perf_counter()
    ae = train_autoencoder(
        snapshots, cfg.ae, seed=seed, device=device, segments=evaluator.subset.sizes, accept=accept,
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
    vectors = sample_vectors(ae, ldm, cfg.n_generated, sampler=cfg.sampler, steps=cfg.sample_steps, seed=seed)
    if not torch.isfinite(vectors).all():
        raise Diverged(f"{int((~torch.isfinite(vectors).all(1)).sum())} of {len(vectors)} generated vectors "
                       f"are non-finite")
    seconds["generate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    generated = assess(evaluator, data, vectors, snapshots, snapshot_scores)
    seconds["evaluate"] = time.perf_counter() - t0
    return PdiffRun(generated, _tail_mean(ae.losses), _tail_mean(ldm.losses), seconds,
                    ae.steps, ae.r2, ae.converged, ae=ae, ldm=ldm, ae_fidelity=fidelity[0])


def sample_vectors(ae: TrainedAutoencoder, ldm: LatentDiffusion, n: int, *, sampler: str = "ddpm",
                   steps: int | None = None, seed: int = 0) -> torch.Tensor:
    """n decoded parameter vectors (CPU) from the EMA denoiser; `seed` is the run's seed, so
    `run_pdiff`'s own draw is `sample_vectors(..., cfg.n_generated, seed=seed)`."""
    gen = torch.Generator().manual_seed(seed + 2)
    return ae.decode(ldm.sample(n, sampler=sampler, steps=steps, generator=gen))


# 3: the state names its autoencoder ("ae_arch"); 2: the LDM config names its denoiser, the autoencoder is
# the convolutional one; format 1 predates the MLP, its denoiser a UNet.
GENERATOR_FORMAT = 3


def generator_state(run: PdiffRun, cfg: PdiffConfig, seed: int) -> dict[str, Any]:
    """Everything needed to sample and decode more vectors from a finished run, as plain
    CPU tensors and Python values (for `torch.save`): the autoencoder and its normaliser, the
    latent standardisation, the schedule and the EMA denoiser (not the raw one), the configs
    and the run's seed."""
    cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
    return {
        "format": GENERATOR_FORMAT, "seed": int(seed),
        "config": {"ae": dataclasses.asdict(cfg.ae), "ldm": dataclasses.asdict(cfg.ldm), "n_generated": cfg.n_generated,
                   "sampler": cfg.sampler, "sample_steps": cfg.sample_steps}, "n_params": run.ae.model.n_params,
        "latent_dim": int(run.ldm.mean.shape[0]), "ae_arch": autoencoder_name(run.ae.model),
        "autoencoder": cpu(run.ae.model.state_dict()), "normalizer": cpu(run.ae.normalizer.state_dict()),
        # The raw denoiser is left out: sampling uses the EMA copy only.
        "diffusion": cpu({k: v for k, v in run.ldm.state_dict().items() if not k.startswith("denoiser.")}),
    }


def restore_generator(state: dict[str, Any], device: torch.device | str = "cpu"
                      ) -> tuple[TrainedAutoencoder, LatentDiffusion, PdiffConfig]:
    """The (autoencoder, latent diffusion, config) saved by `generator_state`, ready to sample."""
    if state.get("format") not in (1, 2, GENERATOR_FORMAT):
        raise ValueError(f"unknown generator format {state.get('format')!r} (expected {GENERATOR_FORMAT})")
    c = state["config"]
    if state["format"] == 1:
        c = c | {"ldm": {"denoiser": "unet"} | c["ldm"]}
    cfg = PdiffConfig(AEConfig(**c["ae"]), LDMConfig(**c["ldm"]), c["n_generated"], c["sampler"], c["sample_steps"])
    model = build_autoencoder(state["n_params"], cfg.ae, state.get("ae_arch", "conv"))
    model.load_state_dict(state["autoencoder"])
    normalizer = Normalizer(torch.zeros(2, state["n_params"]))
    normalizer.mean, normalizer.scale = state["normalizer"]["mean"], state["normalizer"]["scale"]
    ae = TrainedAutoencoder(model.to(device).eval(), normalizer.to(device), [])
    ldm = LatentDiffusion(torch.zeros(2, state["latent_dim"]), cfg.ldm)
    missing, unexpected = ldm.load_state_dict(state["diffusion"], strict=False)
    if unexpected or any(not k.startswith("denoiser.") for k in missing):
        raise ValueError(f"generator state does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    ldm.denoiser.load_state_dict(ldm.ema.module.state_dict())  # one set of weights, the EMA's
    return ae, ldm.to(device).eval(), cfg


def run_baselines(snapshots: torch.Tensor, evaluator: BatchedEvaluator, data: Dataset, snapshot_scores: Scores,
                  n: int, *, seed: int = 0, noise_sigma: float = 0.01) -> dict[str, Assessment]:
    """Every baseline of `pdiff.baselines`, N vectors each, scored exactly like p-diff's."""
    out = {}
    for i, (name, draw) in enumerate(BASELINES.items()):
        gen = torch.Generator().manual_seed(seed * 1000 + i)
        kwargs = {"sigma": noise_sigma} if name == "noise" else {}
        out[name] = assess(evaluator, data, draw(snapshots, n, gen, **kwargs), snapshots, snapshot_scores)
    return out


def latent_gaussian(ae: TrainedAutoencoder, snapshots: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """n vectors decoded from latents drawn from a Gaussian fitted to the encoded snapshots (their mean and
    sample covariance): what the autoencoder alone generates, with no diffusion model. A trial whose
    diffusion model does no better than this has learnt nothing the latent Gaussian did not."""
    encoded = ae.encode(snapshots)
    latents = encoded.cpu()
    centred = latents - latents.mean(0)
    gen = torch.Generator().manual_seed(seed + 5)
    z = latents.mean(0) + torch.randn(n, len(latents), generator=gen) @ centred / max(1, len(latents) - 1) ** 0.5
    return ae.decode(z.to(encoded.device)).cpu()  # drawn on the CPU (the same for a seed), decoded where the AE is


def reference_families(run: PdiffRun, snapshots: torch.Tensor, evaluator: BatchedEvaluator, data: Dataset,
                       snapshot_scores: Scores, n: int, *, seed: int, baseline_seed: int | None,
                       noise_sigma: float = 0.01) -> dict[str, Assessment]:
    """What a p-diff family is judged against: `latent_gaussian` (its own autoencoder, no diffusion) and,
    unless `baseline_seed` is None, the three baselines drawn exactly as `run_baselines(..., seed=baseline_seed)`
    draws them (the same vectors as the sweep's baselines table)."""
    out = {"latent_gaussian": assess(evaluator, data, latent_gaussian(run.ae, snapshots, n, seed=seed),
                                     snapshots, snapshot_scores)}
    if baseline_seed is not None:
        out |= run_baselines(snapshots, evaluator, data, snapshot_scores, n, seed=baseline_seed,
                             noise_sigma=noise_sigma)
    return out


def replace_knobs(cfg: PdiffConfig, **knobs: Any) -> PdiffConfig:
    """A copy of `cfg` with some flat knobs changed."""
    return PdiffConfig.from_knobs(**(cfg.knobs() | knobs))

