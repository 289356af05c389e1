"""Latent DDPM: a 1-D conv denoiser, a linear beta schedule, epsilon-prediction,
an EMA of the denoiser, and two samplers (ancestral DDPM, deterministic DDIM).

Unlike the official v1 code, every sample in a batch is conditioned on its own
timestep (the v1 denoiser embeds only the first sample's t for the whole batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Collection

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["LDMConfig", "Schedule", "Denoiser", "LatentDiffusion", "train_diffusion", "SAMPLERS"]

SAMPLERS = ("ddpm", "ddim")


@dataclass(frozen=True)
class LDMConfig:
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    channels: tuple[int, ...] = (64, 128)  # one resolution level each
    steps: int = 3000
    lr: float = 1e-3
    batch_size: int = 64
    ema_decay: float = 0.999


class Schedule(nn.Module):
    """Linear betas and the quantities DDPM / DDIM need, as buffers."""

    def __init__(self, timesteps: int, beta_start: float, beta_end: float):
        super().__init__()
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        alpha_bar = torch.cumprod(1 - betas, 0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        for name, value in {
            "betas": betas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "posterior_var": betas * (1 - alpha_bar_prev) / (1 - alpha_bar),
        }.items():
            self.register_buffer(name, value.float())

    @property
    def timesteps(self) -> int:
        return len(self.betas)

    def noised(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ab = self.alpha_bar[t].view(-1, *([1] * (x0.ndim - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv1d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv1d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.time(t_emb)[:, :, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class Denoiser(nn.Module):
    """A small 1-D UNet over latents viewed as (B, 1, latent_dim); predicts the noise."""

    def __init__(self, latent_dim: int, channels: tuple[int, ...] = (64, 128)):
        super().__init__()
        self.latent_dim = latent_dim
        self.stride = 2 ** (len(channels) - 1)
        self.length = math.ceil(latent_dim / self.stride) * self.stride
        t_dim = 4 * channels[0]
        self.t_dim = channels[0]
        self.time = nn.Sequential(nn.Linear(channels[0], t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.stem = nn.Conv1d(1, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c_prev = channels[0]
        for i, c in enumerate(channels):
            self.down.append(_ResBlock(c_prev, c, t_dim))
            last = i == len(channels) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv1d(c, c, 4, stride=2, padding=1))
            c_prev = c
        self.mid = _ResBlock(c_prev, c_prev, t_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, c in reversed(list(enumerate(channels))):
            self.up.append(_ResBlock(c_prev + c, c, t_dim))
            self.upsample.append(nn.ConvTranspose1d(c, c, 4, stride=2, padding=1) if i > 0 else nn.Identity())
            c_prev = c
        self.out = nn.Sequential(nn.GroupNorm(8, c_prev), nn.SiLU(), nn.Conv1d(c_prev, 1, 3, padding=1))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t_emb = self.time(_timestep_embedding(t, self.t_dim))  # one embedding per sample
        h = self.stem(F.pad(z, (0, self.length - self.latent_dim)).unsqueeze(1))
        skips = []
        for block, down in zip(self.down, self.downsample):
            h = block(h, t_emb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, t_emb)
        for block, up in zip(self.up, self.upsample):
            h = up(block(torch.cat([h, skips.pop()], dim=1), t_emb))
        return self.out(h).squeeze(1)[:, : self.latent_dim]


def _ema_avg(decay: float):
    # Warm-up as in lucidrains' EMA: early on the average follows the weights
    # closely, so short CPU runs do not sample from a near-initial denoiser.
    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        d = min(decay, (1 + float(num_averaged)) / (10 + float(num_averaged)))
        return d * averaged + (1 - d) * current

    return avg


class LatentDiffusion(nn.Module):
    """DDPM over latents standardised to zero mean and unit spread."""

    def __init__(self, latents: torch.Tensor, cfg: LDMConfig = LDMConfig()):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("mean", latents.mean(0))
        self.register_buffer("scale", (latents - latents.mean(0)).std().clamp(min=1e-8))
        self.schedule = Schedule(cfg.timesteps, cfg.beta_start, cfg.beta_end)
        self.denoiser = Denoiser(latents.shape[1], cfg.channels)
        self.ema = AveragedModel(self.denoiser, avg_fn=_ema_avg(cfg.ema_decay))
        self.losses: list[float] = []  # training loss per step

    def loss(self, latents: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        x0 = (latents - self.mean) / self.scale
        t = torch.randint(0, self.schedule.timesteps, (len(x0),), generator=gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        return F.mse_loss(self.denoiser(self.schedule.noised(x0, t, noise), t), noise)

    @torch.no_grad()
    def sample(self, n: int, *, sampler: str = "ddpm", steps: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n latents from the EMA denoiser. `steps` only applies to DDIM (default 50)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; known samplers: {', '.join(SAMPLERS)}")
        net, s = self.ema.module.eval(), self.schedule
        dev = self.mean.device
        randn = lambda: torch.randn((n, len(self.mean)), generator=generator).to(dev)  # noqa: E731
        x = randn()
        if sampler == "ddpm":
            for t in reversed(range(s.timesteps)):
                tt = torch.full((n,), t, device=dev, dtype=torch.long)
                eps = net(x, tt)
                mean = (x - s.betas[t] / (1 - s.alpha_bar[t]).sqrt() * eps) / (1 - s.betas[t]).sqrt()
                x = mean + s.posterior_var[t].sqrt() * randn() if t > 0 else mean
        else:
            ts = torch.linspace(s.timesteps - 1, 0, steps or 50).round().long().unique_consecutive().tolist()
            for i, t in enumerate(ts):
                tt = torch.full((n,), t, device=dev, dtype=torch.long)
                eps = net(x, tt)
                x0 = (x - (1 - s.alpha_bar[t]).sqrt() * eps) / s.alpha_bar[t].sqrt()
                ab_prev = s.alpha_bar[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, device=dev)
                x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x * self.scale + self.mean


def train_diffusion(latents: torch.Tensor, cfg: LDMConfig = LDMConfig(), *, seed: int = 0,
                    on_step: Callable[[int, float], None] | None = None,
                    probe: Callable[[int, LatentDiffusion], None] | None = None,
                    probe_steps: Collection[int] = ()) -> LatentDiffusion:
    """Train the DDPM on clean latents (K, latent_dim).

    `on_step(step, loss)` is called every step; `probe(step, ldm)` after the
    steps in `probe_steps`, with the model (and its EMA) as trained so far.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    ldm = LatentDiffusion(latents, cfg).to(latents.device)
    opt = torch.optim.AdamW(ldm.denoiser.parameters(), lr=cfg.lr, weight_decay=0.0)
    ldm.denoiser.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(latents), (min(cfg.batch_size, len(latents)),), generator=gen)
        loss = ldm.loss(latents[idx.to(latents.device)], gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ldm.ema.update_parameters(ldm.denoiser)
        ldm.losses.append(loss.item())
        if on_step:
            on_step(step, ldm.losses[-1])
        if probe and step in probe_steps:
            probe(step, ldm)
            ldm.denoiser.train()
    return ldm
