"""The parameter autoencoder: 1-D convolutions over the flattened subset, with noise augmentation.

p-diff's autoencoder is trained on only K vectors (K ~ 200), so it is trained
with two separate noise augmentations: a small noise on the input parameters
(`input_noise`, paper 0.001) and a larger one on the latent (`latent_noise`,
paper 0.1). The latter makes the decoder map a neighbourhood of every training
latent to a working model, which is what lets the diffusion model's imperfect
samples decode to good parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Collection

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AEConfig", "Normalizer", "ParameterAutoencoder", "train_autoencoder"]


@dataclass(frozen=True)
class AEConfig:
    latent_dim: int = 128
    input_noise: float = 1e-3
    latent_noise: float = 0.1
    channels: tuple[int, ...] = (32, 64, 128, 128)  # one stride-2 stage each
    steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 2e-6
    batch_size: int = 64


class Normalizer(nn.Module):
    """Per-coordinate centring and one global scale (the spread of the parameter values).

    The scale is that of the parameters themselves, not of their variation across
    snapshots, so the noise knobs keep the paper's meaning: noise relative to the
    magnitude of the weights. A per-coordinate scale would blow up coordinates that
    barely move during collection.
    """

    def __init__(self, snapshots: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", snapshots.mean(0))
        self.register_buffer("scale", snapshots.std().clamp(min=1e-8))

    def forward(self, params: torch.Tensor) -> torch.Tensor:
        return (params - self.mean) / self.scale

    def inverse(self, normed: torch.Tensor) -> torch.Tensor:
        return normed * self.scale + self.mean


class ParameterAutoencoder(nn.Module):
    """Vectors (B, n) -> latents (B, latent_dim) -> vectors (B, n)."""

    def __init__(self, n_params: int, cfg: AEConfig = AEConfig()):
        super().__init__()
        self.n_params, self.cfg = n_params, cfg
        stride = 2 ** len(cfg.channels)
        self.length = math.ceil(n_params / stride) * stride  # padded length
        chans = (cfg.channels[0], *cfg.channels)
        self.bottom = (chans[-1], self.length // stride)

        enc = [nn.Conv1d(1, chans[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            enc += [nn.Conv1d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*enc, nn.Flatten(1), nn.Linear(math.prod(self.bottom), cfg.latent_dim))

        dec = [nn.Linear(cfg.latent_dim, math.prod(self.bottom)), nn.Unflatten(1, self.bottom)]
        for c_in, c_out in zip(chans[:0:-1], chans[-2::-1]):
            dec += [nn.LeakyReLU(0.2), nn.ConvTranspose1d(c_in, c_out, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*dec, nn.LeakyReLU(0.2), nn.Conv1d(chans[0], 1, 3, padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, self.length - self.n_params)).unsqueeze(1)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).squeeze(1)[:, : self.n_params]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training pass: noise on the input, noise on the latent, reconstruct the clean input."""
        z = self.encode(x + self.cfg.input_noise * torch.randn_like(x))
        return self.decode(z + self.cfg.latent_noise * torch.randn_like(z))


@dataclass
class TrainedAutoencoder:
    model: ParameterAutoencoder
    normalizer: Normalizer
    losses: list[float]

    @torch.no_grad()
    def encode(self, params: torch.Tensor) -> torch.Tensor:
        """Clean latents of parameter vectors (no noise)."""
        self.model.eval()
        dev = next(self.model.parameters()).device
        return self.model.encode(self.normalizer(params.to(dev)))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Parameter vectors, de-normalised, on the CPU."""
        self.model.eval()
        return self.normalizer.inverse(self.model.decode(latents)).cpu()


def train_autoencoder(snapshots: torch.Tensor, cfg: AEConfig = AEConfig(), *, seed: int = 0,
                      device: torch.device | str = "cpu",
                      on_step: Callable[[int, float], None] | None = None,
                      probe: Callable[[int, TrainedAutoencoder], None] | None = None,
                      probe_steps: Collection[int] = ()) -> TrainedAutoencoder:
    """Train the autoencoder on K snapshots (K, n).

    `on_step(step, loss)` is called every step; `probe(step, trained)` after the
    steps in `probe_steps`, with the autoencoder as trained so far.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    normalizer = Normalizer(snapshots).to(device)
    data = normalizer(snapshots.to(device))
    model = ParameterAutoencoder(snapshots.shape[1], cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.steps, 1), eta_min=cfg.lr * 0.01)
    trained = TrainedAutoencoder(model, normalizer, [])
    losses = trained.losses
    model.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(data), (min(cfg.batch_size, len(data)),), generator=gen)
        batch = data[idx.to(device)]
        loss = F.mse_loss(model(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if on_step:
            on_step(step, losses[-1])
        if probe and step in probe_steps:
            probe(step, trained)
            model.train()
    model.eval()
    return trained
