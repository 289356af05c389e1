"""The config dataclasses of p-diff and the flat knobs a sweep searches: each setting declared once.

A field holds its default; its metadata holds what it means (`doc`: `--explain` and docs/reference.md print
it) and, where the sweep tool bounds its size, its `maximum` (of each entry for a list, which also has at most
`entries` entries). Those maxima are the orchestrator's sanity bounds (a larger value is a typo or a run of
weeks); the values a setting cannot take at all are checked by its dataclass's `__post_init__`
(`pdiff.checks`), so the library is safe without the orchestrator.

Torch-free: the spec parser and the table readers read it without loading the models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from . import checks
from .checks import ConfigError, short

__all__ = ["AEConfig", "LDMConfig", "TrainConfig", "CollectConfig", "PdiffConfig", "KNOBS", "KNOB_DOCS",
           "setting", "field_named", "knob_field", "NORMALIZATIONS", "SAMPLERS", "DENOISERS", "DEFAULT_CHANNELS",
           "OPTIMIZERS", "SCHEDULES", "UNITS", "BATCHNORM_MODES"]

NORMALIZATIONS = ("global", "tensor")
AUTOENCODER_ARCHS = ("chunked", "conv")  # pdiff.autoencoder.AUTOENCODERS, by name
SAMPLERS = ("ddpm", "ddim")
DENOISERS = ("mlp", "unet")
# The denoiser's widths when `channels` is not given: residual blocks (mlp), resolution levels (unet).
DEFAULT_CHANNELS = {"mlp": (256, 256, 256), "unet": (64, 128)}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
UNITS = ("step", "epoch")
BATCHNORM_MODES = ("eval", "train")

# Sweep-tool maxima shared by several settings.
MAX_STEPS = 1_000_000  # training steps of the autoencoder or the denoiser, examples per batch
MAX_WIDTH = 65_536  # a latent length, a token, a convolution's channels
MAX_RATE = 1_000  # learning rates, weight decay, noise stds
MAX_STAGES = 16  # entries of a channel list


def setting(default: Any, doc: str, *, maximum: int | None = None, entries: int | None = None) -> Any:
    """A config field: its default, what it means, and the sweep tool's maximum of its value (of each entry
    for a list, with at most `entries` entries), where there is one."""
    meta = {"doc": doc, "maximum": maximum, "entries": entries}
    return field(default=default, metadata={k: v for k, v in meta.items() if v is not None})


def field_named(cls: type, name: str) -> dataclasses.Field:
    """`cls`'s field `name`: its default, and in its metadata its `doc`, and its `maximum` and `entries` where
    it has them."""
    return next(f for f in dataclasses.fields(cls) if f.name == name)


@dataclass(frozen=True)
class AEConfig:
    """The parameter autoencoder (pdiff.autoencoder) and how it is trained."""

    arch: str = setting("chunked", "chunked (a dense projection per chunk of <= 16,384 numbers: cost linear in the "
                                   "subset size, tested to 1M numbers; the default) | conv (1-D convolutions over "
                                   "tokens, as the official code; ae_channels and ae_token_size shape it)")
    latent_dim: int = setting(128, "length of the autoencoder's latent vector per model (what the diffusion "
                                   "model learns)", maximum=MAX_WIDTH)
    input_noise: float = setting(1e-3, "std of the Gaussian noise added to the normalised parameters while the AE "
                                       "trains (paper: 0.001)", maximum=MAX_RATE)
    latent_noise: float = setting(0.1, "std of the Gaussian noise added to the latent codes while the AE trains "
                                       "(paper: 0.1)", maximum=MAX_RATE)
    channels: tuple[int, ...] = setting((64, 128, 256), "channels of the conv AE's convolution stages, one stride-2 "
                                        "stage each", maximum=MAX_WIDTH, entries=MAX_STAGES)
    token_size: int = setting(64, "numbers per token: the input channels of the conv AE's first convolution",
                              maximum=MAX_WIDTH)
    steps: int = setting(5000, "upper bound on AE training steps; it stops earlier once ae_min_r2 is reached",
                         maximum=MAX_STEPS)
    min_r2: float = setting(0.95, "share of the snapshots' variance the AE reconstructions must explain before it "
                                  "stops, in (0, 1]")
    # Checked by the caller's `accept` (pdiff.pipeline): R2 is variance-weighted, and an AE at R2 0.977 was seen
    # to map 200 snapshots with 40 distinct sets of mistakes onto 2 (fidelity 0.87); 0.95 kept 21.
    min_fidelity: float = setting(0.95, "mean val IoU of each AE reconstruction's mistakes with its own snapshot's "
                                        "before it stops, in [0, 1] (0: off)")
    check_every: int = setting(100, "AE training steps between quality checks")
    lr: float = setting(1e-3, "AdamW learning rate of the autoencoder", maximum=MAX_RATE)
    weight_decay: float = setting(2e-6, "AdamW weight decay of the autoencoder")
    batch_size: int = setting(64, "snapshots per AE training step", maximum=MAX_STEPS)
    normalize: str = setting("global", "global (per-coordinate centre, one scale) | tensor (per-tensor "
                                       "standardisation, as the official code)")
    amp: bool = setting(False, "bf16 autocast for the autoencoder's training forward pass (CUDA only; ignored "
                               "elsewhere)")

    def __post_init__(self):  # a bad value raises checks.ConfigError (a ValueError) naming the field
        checks.integer(self, "latent_dim")
        checks.number(self, "input_noise")
        checks.number(self, "latent_noise")
        checks.channels(self, "channels")
        checks.integer(self, "token_size")
        checks.integer(self, "steps")
        checks.number(self, "min_r2", low_open=True, high=1)
        checks.number(self, "min_fidelity", high=1)
        checks.integer(self, "check_every")
        checks.number(self, "lr", low_open=True)
        checks.number(self, "weight_decay")
        checks.integer(self, "batch_size")
        checks.choice(self, "normalize", NORMALIZATIONS)
        checks.choice(self, "arch", AUTOENCODER_ARCHS)
        checks.flag(self, "amp")


@dataclass(frozen=True)
class LDMConfig:
    """The latent diffusion model (pdiff.diffusion) and how it is trained."""

    timesteps: int = setting(1000, "diffusion steps T of the linear beta schedule")
    beta_start: float = setting(1e-4, "first beta of the linear schedule, in (0, 1)")
    beta_end: float = setting(0.02, "last beta of the linear schedule, in [beta_start, 1)")
    denoiser: str = setting("mlp", "mlp (a residual MLP over the whole latent, the default) | unet (the paper's "
                                   "1-D conv UNet, whose samples under-spread)")
    channels: tuple[int, ...] | None = setting(  # None: DEFAULT_CHANNELS of the denoiser
        None, "widths of the denoiser: one residual block (mlp) or resolution level (unet, multiples of 8) each; "
              f"default {list(DEFAULT_CHANNELS['mlp'])} (mlp), {list(DEFAULT_CHANNELS['unet'])} (unet)",
        maximum=MAX_WIDTH, entries=MAX_STAGES)
    steps: int = setting(2000, "training steps of the latent diffusion model (DDPM loss)", maximum=MAX_STEPS)
    lr: float = setting(1e-3, "AdamW learning rate of the latent denoiser", maximum=MAX_RATE)
    batch_size: int = setting(64, "latent codes per diffusion training step", maximum=MAX_STEPS)
    ema_decay: float = setting(0.999, "decay of the exponential moving average of the denoiser's weights used "
                                      "for sampling")
    amp: bool = setting(False, "bf16 autocast for the denoiser's training forward pass (CUDA only; ignored "
                               "elsewhere)")

    def __post_init__(self):  # a bad value raises checks.ConfigError (a ValueError) naming the field
        checks.integer(self, "timesteps")
        checks.number(self, "beta_start", low_open=True, high=1, high_open=True)
        checks.number(self, "beta_end", low_open=True, high=1, high_open=True)
        if not self.beta_start <= self.beta_end:
            raise ConfigError("beta_end", f"expected a number >= beta_start ({self.beta_start:g}), "
                                          f"got {short(self.beta_end)}")
        checks.choice(self, "denoiser", DENOISERS)
        if self.channels is None:
            object.__setattr__(self, "channels", DEFAULT_CHANNELS[self.denoiser])
        checks.channels(self, "channels")
        checks.integer(self, "steps")
        checks.number(self, "lr", low_open=True)
        checks.integer(self, "batch_size")
        checks.number(self, "ema_decay", high=1)
        checks.flag(self, "amp")


@dataclass(frozen=True)
class TrainConfig:
    """How the source model is trained."""

    epochs: int = setting(10, "training epochs of the source model", maximum=10_000)
    batch_size: int = setting(128, "examples per step", maximum=MAX_STEPS)
    lr: float = setting(0.1, "peak learning rate", maximum=MAX_RATE)
    optimizer: str = setting("sgd", "sgd (momentum 0.9) | adamw")
    weight_decay: float = setting(5e-4, "weight decay (>= 0)", maximum=MAX_RATE)
    schedule: str = setting("cosine", "cosine | constant learning rate")
    augment: bool = setting(True, "random crops for images >= 28 px, flips for colour images")

    def __post_init__(self):
        checks.integer(self, "epochs")
        checks.integer(self, "batch_size")
        checks.number(self, "lr", low_open=True)
        checks.choice(self, "optimizer", OPTIMIZERS)
        checks.number(self, "weight_decay")
        checks.choice(self, "schedule", SCHEDULES)
        checks.flag(self, "augment")


@dataclass(frozen=True)
class CollectConfig:
    """How the K snapshots of the subset are collected (the paper: K = 200, lr 0.03 on ResNet-18)."""

    k: int = setting(200, "snapshots collected (the paper: 200)", maximum=100_000)
    interval: int = setting(1, "a snapshot every `interval` units", maximum=MAX_STEPS)
    unit: str = setting("step", "step | epoch")
    lr: float = setting(0.03, "learning rate while collecting (the paper: 0.03)", maximum=MAX_RATE)
    optimizer: str = setting("sgd", "sgd | adamw")
    # "eval" pairs every snapshot with the buffers evaluation uses; under "train" the buffers drift, and
    # evaluation uses the collection's final buffers (stored with the cell) for every snapshot and generated model.
    batchnorm: str = setting("eval", "eval (running statistics frozen: each snapshot pairs with the buffers "
                                     "evaluation uses) | train (batch statistics, as the official code: keeps a "
                                     "subset that feeds a BatchNorm scale-invariant; scored with the collection's "
                                     "final buffers)")

    def __post_init__(self):
        checks.integer(self, "k")
        checks.integer(self, "interval")
        checks.choice(self, "unit", UNITS)
        checks.number(self, "lr", low_open=True)
        checks.choice(self, "optimizer", OPTIMIZERS)
        checks.choice(self, "batchnorm", BATCHNORM_MODES)


# The flat knob names a sweep searches over, and the field each one sets (part "": PdiffConfig's own), in the
# order of the trials table's knob columns. What a knob means, its default and its maximum are its field's.
KNOBS = {
    "latent_dim": ("ae", "latent_dim"), "input_noise": ("ae", "input_noise"),
    "latent_noise": ("ae", "latent_noise"), "ae_steps": ("ae", "steps"), "ae_lr": ("ae", "lr"),
    "ae_min_r2": ("ae", "min_r2"), "ae_min_fidelity": ("ae", "min_fidelity"), "normalize": ("ae", "normalize"),
    "ae_arch": ("ae", "arch"), "ae_token_size": ("ae", "token_size"),
    "ae_batch_size": ("ae", "batch_size"), "ldm_steps": ("ldm", "steps"), "ldm_lr": ("ldm", "lr"),
    "ldm_batch_size": ("ldm", "batch_size"), "ema_decay": ("ldm", "ema_decay"),
    "ldm_denoiser": ("ldm", "denoiser"),
    "ae_amp": ("ae", "amp"), "ldm_amp": ("ldm", "amp"),
    "ae_channels": ("ae", "channels"), "ldm_channels": ("ldm", "channels"),
    "n_generated": ("", "n_generated"), "sampler": ("", "sampler"), "sample_steps": ("", "sample_steps"),
}


@dataclass(frozen=True)
class PdiffConfig:
    """Stage 2 on one process (pdiff.pipeline): the autoencoder, the latent diffusion model and the sampling."""

    ae: AEConfig = setting(AEConfig(), "the autoencoder")
    ldm: LDMConfig = setting(LDMConfig(), "the latent diffusion model")
    n_generated: int = setting(200, "parameter vectors sampled, decoded and scored per trial", maximum=100_000)
    sampler: str = setting("ddpm", "ddpm (all T steps) | ddim (deterministic, sample_steps steps)")
    sample_steps: int | None = setting(None, "DDIM steps (null: all T); DDPM always walks all T steps",
                                       maximum=100_000)

    def __post_init__(self):  # a bad value raises ConfigError (a ValueError) naming the field
        if not isinstance(self.ae, AEConfig):
            raise ConfigError("ae", f"expected an AEConfig, got {short(self.ae)}")
        if not isinstance(self.ldm, LDMConfig):
            raise ConfigError("ldm", f"expected an LDMConfig, got {short(self.ldm)}")
        checks.integer(self, "n_generated")
        checks.choice(self, "sampler", SAMPLERS)
        checks.integer(self, "sample_steps", optional=True)

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
        made = {}
        for part, make in (("ae", AEConfig), ("ldm", LDMConfig)):
            try:
                made[part] = make(**parts[part])
            except ConfigError as err:  # name the knob (`ae_steps: ...`), not the field (`steps: ...`)
                knob = next((n for n, where in KNOBS.items() if where == (part, err.field)), err.field)
                raise ConfigError(knob, err.message, err.index) from None
        return cls(made["ae"], made["ldm"], **parts[""])

    def knobs(self) -> dict[str, Any]:
        """The flat knob values of this configuration."""
        return {n: getattr(getattr(self, p) if p else self, a) for n, (p, a) in KNOBS.items()}


# The config class of each knob part: PdiffConfig and the configs it holds.
_PARTS = {"": PdiffConfig} | {f.name: type(f.default) for f in dataclasses.fields(PdiffConfig)
                              if dataclasses.is_dataclass(f.default)}


def knob_field(knob: str) -> dataclasses.Field:
    """The config field a knob sets (`field_named`)."""
    part, attr = KNOBS[knob]
    return field_named(_PARTS[part], attr)


# What each knob means: its field's doc (`--explain`, docs/reference.md, the trials table's column reference).
KNOB_DOCS = {knob: knob_field(knob).metadata["doc"] for knob in KNOBS}
