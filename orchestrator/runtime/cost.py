"""The arithmetic of a sweep's cost estimate: the work of each stage, its seconds from measured throughputs,
the slots a machine gives, wall time and GPU-hours. Pure functions and plain data, torch-free.

The throughputs are measured and cached by `orchestrator.runtime.calibrate` (a `Calibration`);
`orchestrator.runtime.estimate` turns this arithmetic into the plan's lines.

Per cell (stage 1): (source epochs x steps per epoch + the collection's steps) x a training step, plus the
source and its K snapshots scored on val + test. Per trial (stage 2): AE steps x an AE step + LDM steps x an
LDM step + sampling its N models + scoring them and its reference families (its latent Gaussian, and the
baselines drawn again when on); once per cell, the baselines task. A searched knob counts at its
distribution's mean, "at most" at its range's high end. Wall time spreads the tasks over the slots the
machines give; GPU-hours are the tasks' durations times the GPUs each asks.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdiff.config import PdiffConfig
from pdiff.names import METHODS

if TYPE_CHECKING:  # the spec's module imports torch; this one stays torch-free
    from orchestrator.spec import Cell, Distribution, Resources, SweepSpec

__all__ = ["DATASET_SIZES", "GPU_OF_FAMILY", "KINDS", "CALIBRATE", "CellWork", "TrialWork", "Measurement",
           "Machine", "Calibration", "calibration_dir", "splits", "knob_value", "points", "cell_work",
           "trial_work", "needs", "all_needs", "cell_seconds", "trial_seconds", "baselines_seconds", "slots",
           "stage1_wall", "stage2_wall"]

# name -> (train examples before the validation split, test examples), as pdiff.data loads them: torchvision's
# sizes, and scikit-learn's 1,797 digits with a fifth (359) held out for test. Known without the data.
DATASET_SIZES = {"digits": (1438, 359), "mnist": (60000, 10000), "fashion_mnist": (60000, 10000),
                 "cifar10": (50000, 10000), "cifar100": (50000, 10000), "stl10": (5000, 8000)}
VAL_FRACTION = 0.1  # pdiff.data.load_dataset's default: the validation split carved from train
# AWS instance families -> the name torch gives their GPU (torch.cuda.get_device_name), the calibration's key.
GPU_OF_FAMILY = {"g4dn": "Tesla T4", "g5": "NVIDIA A10G", "g6": "NVIDIA L4", "p3": "Tesla V100-SXM2-16GB",
                 "p4d": "NVIDIA A100-SXM4-40GB", "p5": "NVIDIA H100 80GB HBM3"}
STEP_KNOBS = ("ae_steps", "ldm_steps", "n_generated", "sample_steps")  # counts: their mean, not a value taken
TIMING_KNOBS = STEP_KNOBS + ("latent_dim", "ae_arch", "ae_channels", "ae_token_size", "ae_batch_size", "ldm_channels",
                             "ldm_batch_size", "ldm_denoiser", "sampler")  # searched ones are said in the plan
KINDS = {"source_step": "source training step", "ae_step": "AE step", "ldm_step": "LDM step",
         "sample": "sampling N models", "score_prefix": "scoring (frozen prefix)",
         "score_vector": "scoring (per model)"}
CALIBRATE = "python -m orchestrator.sweep --dry-run --calibrate"  # measures what the estimate lacks
CACHE_ENV, DEFAULT_CACHE = "PDIFF_SWEEP_CACHE", "~/.cache/pdiff-sweep"


def calibration_dir() -> Path:
    """Where measured throughputs are cached: `$PDIFF_SWEEP_CACHE/calibration` (default ~/.cache/pdiff-sweep)."""
    return Path(os.path.expanduser(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)) / "calibration"


def splits(dataset: str) -> tuple[int, int, int]:
    """(train, val, test) examples of a dataset as pdiff.data splits it."""
    full, test = DATASET_SIZES[dataset]
    val = max(1, round(VAL_FRACTION * full))
    return full - val, val, test


# -- the knobs' values: mean and high end ---------------------------------------------------------------------

def knob_value(name: str, dist: Distribution, where: str) -> Any:
    """A searched knob at its distribution's mean (`where="mean"`) or high end ("high"). A choice of numbers:
    their mean for a count (STEP_KNOBS), else the value nearest it (a size the knob takes); of names: the first
    value and the last."""
    if dist.type == "choice":
        values = list(dist.values)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return values[0] if where == "mean" else values[-1]
        mean = sum(values) / len(values)
        if where == "high":
            return max(values)
        return round(mean) if name in STEP_KNOBS else min(values, key=lambda v: abs(v - mean))
    low, high = dist.low, dist.high
    value = high if where == "high" else (high - low) / math.log(high / low) if (
        dist.type == "loguniform" or dist.log) else (low + high) / 2
    return round(value) if dist.type == "int" else value


def points(spec: SweepSpec) -> dict[str, PdiffConfig]:
    """The trial configuration at the searched knobs' means ("mean") and high ends ("high")."""
    return {w: spec.pdiff_config({k: knob_value(k, d, w) for k, d in spec.search.items()}) for w in ("mean", "high")}


# -- work: steps and models scored ----------------------------------------------------------------------------

@dataclass(frozen=True)
class CellWork:
    """Stage 1 of one cell: training steps (per DDP worker), and the models scored in `calls` passes over
    `images` (val + test)."""

    train_steps: int
    collect_steps: int
    scored: int
    calls: int
    images: int


@dataclass(frozen=True)
class TrialWork:
    """One trial: AE and LDM steps, and the models scored in `calls` passes (its family and the references)."""

    ae_steps: int
    ldm_steps: int
    scored: int
    calls: int


def cell_work(cell: Cell, workers: int = 1) -> CellWork:
    n_train, n_val, n_test = splits(cell.dataset)
    per_epoch = math.ceil(n_train / cell.train.batch_size / workers)
    c = cell.collect
    collect = c.k * c.interval * (per_epoch if c.unit == "epoch" else 1)
    return CellWork(cell.train.epochs * per_epoch, collect, c.k + 1, 2, n_val + n_test)  # the source, the K


def trial_work(cfg: PdiffConfig, n_ref: int, baselines: bool) -> TrialWork:
    """`n_ref`: models per reference family (the spec's fixed n_generated)."""
    families = 1 + len(METHODS) * baselines  # its latent Gaussian, and each baseline drawn again
    return TrialWork(cfg.ae.steps, cfg.ldm.steps, cfg.n_generated + families * n_ref, 1 + families)


def needs(cell: Cell, cfg: PdiffConfig | None, stage: int) -> dict[str, dict[str, Any]]:
    """kind -> what is timed (the cache's key, with the device): the throughputs a cell's stage needs."""
    model = {"arch": cell.arch, "dataset": cell.dataset}
    scoring = model | {"subset": list(cell.subset)}
    out = {"score_prefix": scoring, "score_vector": scoring}
    if stage == 1:
        t = cell.train
        return {"source_step": model | {"batch": t.batch_size, "optimizer": t.optimizer, "augment": t.augment}} | out
    ae, ldm, k = cfg.ae, cfg.ldm, cell.collect.k
    ae_sizes = {"arch": ae.arch, "latent_dim": ae.latent_dim, "channels": list(ae.channels), "token_size": ae.token_size}
    ldm_sizes = {"timesteps": ldm.timesteps, "denoiser": ldm.denoiser, "channels": list(ldm.channels)}
    return {"ae_step": scoring | {"k": k, "ae": ae_sizes | {"batch_size": ae.batch_size, "normalize": ae.normalize,
                                                             "amp": ae.amp}},
            "ldm_step": {"k": k, "latent_dim": ae.latent_dim, "ldm": ldm_sizes | {"batch_size": ldm.batch_size,
                                                                                 "amp": ldm.amp}},
            "sample": scoring | {"ae": ae_sizes, "ldm": ldm_sizes, "sampler": cfg.sampler,
                                 "sample_steps": cfg.sample_steps, "n": cfg.n_generated}} | out


def all_needs(spec: SweepSpec, stage: int) -> list[tuple[str, dict[str, Any]]]:
    """Every (kind, what) a stage of the spec needs, each once (stage 2: at both points)."""
    cfgs = list(points(spec).values()) if stage == 2 else [None]
    out = []
    for cell in spec.cells:
        for cfg in cfgs:
            out += [n for n in needs(cell, cfg, stage).items() if n not in out]
    return out


# -- seconds from throughputs ---------------------------------------------------------------------------------

def _scoring(scored: int, calls: int, images: int, rates: dict[str, float]) -> float:
    """`calls` passes of the frozen prefix over `images`, and the suffix per image and model."""
    return images * (calls * rates["score_prefix"] + scored * rates["score_vector"])


def cell_seconds(work: CellWork, rates: dict[str, float]) -> float:
    return ((work.train_steps + work.collect_steps) * rates["source_step"]
            + _scoring(work.scored, work.calls, work.images, rates))


def trial_seconds(work: TrialWork, images: int, rates: dict[str, float]) -> float:
    return (work.ae_steps * rates["ae_step"] + work.ldm_steps * rates["ldm_step"] + rates["sample"]
            + _scoring(work.scored, work.calls, images, rates))


def baselines_seconds(n_ref: int, images: int, rates: dict[str, float]) -> float:
    """The cell's baselines task: each baseline family drawn and scored."""
    return _scoring(len(METHODS) * n_ref, len(METHODS), images, rates)


def slots(cpus: float, gpus: float, nodes: int, res: Resources) -> int:
    """Tasks of `res` that `nodes` machines of `cpus` CPUs and `gpus` GPUs run at once."""
    fits = math.floor(cpus / res.cpus + 1e-9)
    if res.gpus:
        fits = min(fits, math.floor(gpus / res.gpus + 1e-9))
    return max(0, fits) * nodes


def stage1_wall(durations: list[float], at_once: int) -> float:
    """Cells spread over `at_once` slots: no shorter than the longest cell, nor than the work per slot."""
    return max(max(durations, default=0.0), sum(durations) / at_once) if durations else 0.0


def stage2_wall(cells: list[tuple[int, float, float]], max_concurrent: int, at_once: int) -> float:
    """(trials, seconds per trial, baselines seconds) per cell; a cell runs `max_concurrent` trials at once,
    all cells side by side within `at_once` slots."""
    longest = max(max(math.ceil(n / max_concurrent) * d, b) for n, d, b in cells) if cells else 0.0
    return max(longest, sum(n * d + b for n, d, b in cells) / at_once) if cells else 0.0


# -- throughputs and where they were measured -----------------------------------------------------------------

@dataclass(frozen=True)
class Measurement:
    """One throughput: seconds per unit of `kind` (a step, a trial's sampling, an image, an image x a model) of
    `what` (needs), timed on `device` with `threads` CPU threads under torch `torch`, at `measured_at` (Unix)."""

    kind: str
    what: dict
    device: str
    seconds: float
    measured_at: float
    torch: str = ""
    threads: int = 1


@dataclass(frozen=True)
class Machine:
    """This machine's devices as measurements name them: its CPU (`cpu (model)`), cores, GPU name and count."""

    cpu: str
    cores: int
    gpu: str | None = None
    gpus: int = 0


@dataclass(frozen=True)
class Calibration:
    """This machine and every throughput known (measured here, or cached from another machine's device)."""

    machine: Machine
    measurements: tuple[Measurement, ...] = ()

    def find(self, device: str, kind: str, what: dict) -> Measurement | None:
        """The newest measurement of `what` on `device`."""
        found = [m for m in self.measurements if m.device == device and m.kind == kind and m.what == what]
        return max(found, key=lambda m: m.measured_at, default=None)
