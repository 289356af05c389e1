"""The parameter autoencoder: 1-D convolutions over the subset folded into tokens, with noise augmentation.

p-diff's autoencoder is trained on only K vectors (K ~ 200), so it is trained
with two separate noise augmentations: a small noise on the input parameters
(`input_noise`, paper 0.001) and a larger one on the latent (`latent_noise`,
paper 0.1). The latter makes the decoder map a neighbourhood of every training
latent to a working model, which is what lets the diffusion model's imperfect
samples decode to good parameters.

As in the official code, the flat vector is folded into tokens of `token_size`
numbers that the convolutions see as channels: the sequence they run over is
n / token_size long, not n, which makes a step ~100x cheaper on a 5,000-number
subset than convolving the raw vector.

An undertrained autoencoder decodes every latent to nearly the same vector, so
its generated models are copies of one model. Training therefore stops on a
measured quality, not a step count: reconstructions of the clean snapshots must
explain `min_r2` of the snapshot-to-snapshot variance (and pass the caller's
`accept` check, e.g. the snapshots' accuracy), with `steps` as the upper bound.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .chunked_autoencoder import ChunkedAutoencoder
from .config import AUTOENCODER_ARCHS, NORMALIZATIONS, AEConfig  # their home: pdiff.config

__all__ = ["AEConfig", "AUTOENCODERS", "NORMALIZATIONS", "Normalizer", "ParameterAutoencoder", "TrainedAutoencoder",
           "autoencoder_name", "build_autoencoder", "reconstruction_r2", "train_autoencoder"]


class Normalizer(nn.Module):
    """Parameter vectors to the scale the autoencoder trains on, and back.

    "global": per-coordinate centring and one global scale (the spread of the parameter
    values, not of their variation across snapshots), so the noise knobs keep the paper's
    meaning: noise relative to the magnitude of the weights; a per-coordinate scale would
    blow up coordinates that barely move during collection.
    "tensor": the official code's per-tensor standardisation: each tensor of the subset
    (`segments` gives their sizes) minus its mean, over its std, across all snapshots.
    """

    def __init__(self, snapshots: torch.Tensor, mode: str = "global", segments: Sequence[int] | None = None):
        super().__init__()
        if mode == "global":
            mean, scale = snapshots.mean(0), snapshots.std().clamp(min=1e-8).expand(1)
        elif mode == "tensor":
            segments = list(segments or [snapshots.shape[1]])
            if sum(segments) != snapshots.shape[1]:
                raise ValueError(f"segments {segments} do not add up to {snapshots.shape[1]} parameters")
            parts = snapshots.split(segments, dim=1)
            mean = torch.cat([p.mean().expand(p.shape[1]) for p in parts])
            scale = torch.cat([p.std().clamp(min=1e-8).expand(p.shape[1]) for p in parts])
        else:
            raise ValueError(f"unknown normalize {mode!r}; known: {', '.join(NORMALIZATIONS)}")
        self.register_buffer("mean", mean.clone())
        self.register_buffer("scale", scale.clone())

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        return (params - self.mean) / self.scale

    def inverse(self, normed: torch.Tensor) -> torch.Tensor:
        return normed * self.scale + self.mean


class ParameterAutoencoder(nn.Module):
    """Vectors (B, n) -> tokens (B, token_size, L) -> latents (B, latent_dim) -> vectors (B, n)."""

    def __init__(self, n_params: int, cfg: AEConfig = AEConfig()):
        super().__init__()
        self.n_params, self.cfg = n_params, cfg
        stride = 2 ** len(cfg.channels)
        self.tokens = math.ceil(math.ceil(n_params / cfg.token_size) / stride) * stride  # padded sequence
        self.length = self.tokens * cfg.token_size  # padded vector length
        self.bottom = (cfg.channels[-1], self.tokens // stride)
        chans = (cfg.channels[0], *cfg.channels)

        enc = [nn.Conv1d(cfg.token_size, chans[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv1d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*enc, nn.Flatten(1), nn.Linear(math.prod(self.bottom), cfg.latent_dim))

        dec = [nn.Linear(cfg.latent_dim, math.prod(self.bottom)), nn.Unflatten(1, self.bottom)]
        for c_in, c_out in zip(chans[:0:-1], chans[-2::-1]):
            dec += [nn.LeakyReLU(0.2), nn.ConvTranspose1d(c_in, c_out, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec, nn.LeakyReLU(0.2), nn.Conv1d(chans[0], cfg.token_size, 3, padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, self.length - self.n_params))
        return self.encoder(x.view(len(x), self.tokens, self.cfg.token_size).transpose(1, 2))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        tokens = self.decoder(z)  # (B, token_size, L)
        return tokens.transpose(1, 2).reshape(len(z), self.length)[:, : self.n_params]

    def forward(self, x: torch.Tensor, noise: Callable[[torch.Size], torch.Tensor] | None = None) -> torch.Tensor:
        """Training pass: noise on the input, noise on the latent, reconstruct the clean input."""
        randn = noise or (lambda shape: torch.randn(shape, device=x.device))
        z = self.encode(x + self.cfg.input_noise * randn(x.shape))
        return self.decode(z + self.cfg.latent_noise * randn(z.shape))


# The autoencoders by name. "chunked" (pdiff.chunked_autoencoder) costs ~6x less per number and grows
# linearly to 1M numbers (python -m benchmarks.subset_scale); "conv" is the convolutional one above.
AUTOENCODERS = {"chunked": ChunkedAutoencoder, "conv": ParameterAutoencoder}
assert tuple(AUTOENCODERS) == AUTOENCODER_ARCHS, "the knob's choices (pdiff.config) are these names"


def build_autoencoder(n_params: int, cfg: AEConfig = AEConfig(), arch: str | None = None) -> nn.Module:
    """The autoencoder named `arch` (default: `cfg.arch`, the `ae_arch` knob) for vectors of n_params numbers."""
    arch = arch or cfg.arch
    if arch not in AUTOENCODERS:
        raise ValueError(f"unknown autoencoder {arch!r}; known: {', '.join(AUTOENCODERS)}")
    return AUTOENCODERS[arch](n_params, cfg)


def autoencoder_name(model: nn.Module) -> str:
    """The AUTOENCODERS name of a built autoencoder (what a saved generator records)."""
    return next(name for name, cls in AUTOENCODERS.items() if type(model) is cls)


@dataclass
class TrainedAutoencoder:
    model: nn.Module  # one of AUTOENCODERS
    normalizer: Normalizer
    losses: list[float]
    steps: int = 0  # steps taken
    r2: float = float("nan")  # reconstruction R2 on the clean snapshots at the end
    converged: bool = False  # reached min_r2 (and the caller's check) within the step bound
    history: list[tuple[int, float]] = field(default_factory=list)  # (step, R2) at each check

    @torch.no_grad()
    def encode(self, params: torch.Tensor) -> torch.Tensor:
        """Clean latents of parameter vectors (no noise)."""
        self.model.eval()
        dev = self.normalizer.mean.device
        return self.model.encode(self.normalizer(params.to(dev)))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Parameter vectors, de-normalised, on the CPU."""
        self.model.eval()
        return self.normalizer.inverse(self.model.decode(latents)).cpu()

    def reconstruct(self, params: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(params))


def reconstruction_r2(original: torch.Tensor, reconstructed: torch.Tensor) -> float:
    """Share of the snapshot-to-snapshot variance that the reconstructions explain:
    1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2. Decoding everything to the mean scores 0."""
    mean = original.cpu().mean(0, dtype=torch.float64)
    residual, spread = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for a, b in zip(original.split(16), reconstructed.split(16)):  # rows at a time: a whole 1M-number
        a, b = a.double().cpu(), b.double().cpu()  # network's 200 snapshots are 1.6 GB in float64
        residual += (a - b).pow(2).sum()
        spread += (a - mean).pow(2).sum()
    return float(1 - residual / spread.clamp(min=1e-30))


def train_autoencoder(snapshots: torch.Tensor, cfg: AEConfig = AEConfig(), *, seed: int = 0,
                      device: torch.device | str = "cpu", segments: Sequence[int] | None = None,
                      accept: Callable[[torch.Tensor], bool] | None = None,
                      on_step: Callable[[int, float], None] | None = None,
                      on_check: Callable[[int, float], None] | None = None) -> TrainedAutoencoder:
    """Train the autoencoder on K snapshots (K, n) until it reconstructs them well enough.

    Every `cfg.check_every` steps the clean snapshots are reconstructed: training stops
    once their R2 reaches `cfg.min_r2` and `accept(reconstructions)` (if given) agrees,
    or after `cfg.steps`. `segments` are the sizes of the subset's tensors (for
    `normalize="tensor"`). `on_step(step, loss)` is called every `check_every` steps with
    the latest loss (reading a loss is a device sync), `on_check(step, r2)` at each check.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    normalizer = Normalizer(snapshots, cfg.normalize, segments).to(device)
    clean = snapshots.to(device)
    data = normalizer(clean)
    model = build_autoencoder(snapshots.shape[1], cfg).to(device)
    # Fused: one pass over the weights per step. The default (foreach) took 0.165 s of a 0.53 s CPU step
    # of the chunked autoencoder on 85k numbers; fused 0.039 s.
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1), eta_min=cfg.lr * 0.01)
    trained = TrainedAutoencoder(model, normalizer, [])
    noise = lambda shape: torch.randn(shape, generator=gen, device=device)  # noqa: E731
    batch = min(cfg.batch_size, len(data))
    losses = torch.empty(cfg.steps, device=device)
    # The loss and the quality checks stay in float32: autocast covers only the forward pass.
    autocast = ((lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if cfg.amp and device.type == "cuda"
                else contextlib.nullcontext)

    def check(step: int) -> bool:
        recon = trained.reconstruct(snapshots)
        trained.r2 = reconstruction_r2(snapshots, recon)
        trained.history.append((step, trained.r2))
        if on_check:
            on_check(step, trained.r2)
        model.train()
        return trained.r2 >= cfg.min_r2 and (accept is None or accept(recon))

    model.train()
    step = 0
    while step < cfg.steps:
        idx = torch.randint(0, len(data), (batch,), generator=gen, device=device)
        x = data[idx]
        with autocast():
            recon = model(x, noise)
        loss = F.mse_loss(recon.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses[step] = loss.detach()
        step += 1
        if step % cfg.check_every == 0 or step == cfg.steps:
            if on_step:
                on_step(step - 1, float(losses[step - 1]))
            if check(step):
                trained.converged = True
                break
    trained.steps = step
    trained.losses.extend(losses[:step].tolist())
    model.eval()
    return trained
