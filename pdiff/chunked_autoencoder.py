"""A parameter autoencoder whose cost grows linearly with the subset size: dense projections per chunk.

The vector is cut into C equal chunks of at most `CHUNK_SIZE` numbers. Each chunk is projected to
`CHUNK_WIDTH` features by its own dense matrix (all C in one batched matmul), the C * width features are
mixed into one latent of `latent_dim`, and the decoder mirrors this: latent -> C * width features -> each
chunk by its own matrix. Every number is read and written through `CHUNK_WIDTH` weights each way, so a
training step costs ~6 * CHUNK_WIDTH multiply-adds per number and sample, and memory grows by the same
2 * CHUNK_WIDTH weights per number (plus the optimiser's two moments): linear in the subset size, with
one global latent, so the latent DDPM (`pdiff.diffusion`) does not grow at all.

Why not the convolutional autoencoder (`pdiff.autoencoder.ParameterAutoencoder`) at this size: its cost
is linear too, but its constant is larger (1-D convolutions of 64..256 channels over tokens of 64
numbers: ~770 multiply-adds per number and sample forward, against 256 here). Measured on one CPU thread,
K = 200, batch 64 (`python -m benchmarks.subset_scale --ae chunked conv`): a step took 0.30 / 2.57 / 35.6
CPU s at 10k / 100k / 1M numbers (x13.9 for the last 10x) against 0.072 / 0.757 / 8.6 here; peak memory
at 1M was 6.9 and 6.5 GB. With the fused AdamW step (pdiff.autoencoder) this one's steps took 0.048 / 0.53 / 6.1
CPU s, 6.3 GB peak. A whole digits MLP (8,970 numbers, collected at lr 0.03) is reconstructed by
this one to R2 0.997 and fidelity 0.957 in 1,500 steps and generates novel models
(`python -m benchmarks.whole_network`).

The snapshots of one collection vary along few directions (a training trajectory), which a dense
projection captures exactly; nothing here assumes an order or locality of the numbers, so whole
networks and any subset of them are treated alike. The noise augmentation is the paper's (see
`pdiff.autoencoder`): `input_noise` on the normalised input, `latent_noise` on the latent.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CHUNK_SIZE", "CHUNK_WIDTH", "ChunkedAutoencoder"]

CHUNK_SIZE = 16_384  # at most this many numbers per chunk; a subset up to this size is one dense projection
CHUNK_WIDTH = 128  # features per chunk, each way


def _uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
    """nn.Linear's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class ChunkedAutoencoder(nn.Module):
    """Vectors (B, n) -> chunks (B, C, m) -> features (B, C, width) -> latents (B, latent_dim) -> back."""

    def __init__(self, n_params: int, cfg, *, chunk_size: int = CHUNK_SIZE, width: int = CHUNK_WIDTH):
        super().__init__()
        self.n_params, self.cfg, self.width = n_params, cfg, width
        self.chunks = math.ceil(n_params / chunk_size)
        self.size = math.ceil(n_params / self.chunks)  # balanced: the last chunk is padded by < chunks numbers
        self.length = self.chunks * self.size
        c, m = self.chunks, self.size
        self.enc_weight, self.enc_bias = _uniform((c, m, width), m), _uniform((c, width), m)
        self.enc_mix = nn.Linear(c * width, cfg.latent_dim)
        self.dec_mix = nn.Linear(cfg.latent_dim, c * width)
        self.dec_weight, self.dec_bias = _uniform((c, width, m), width), nn.Parameter(torch.zeros(c, m))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        chunks = F.pad(x, (0, self.length - self.n_params)).view(len(x), self.chunks, self.size)
        h = torch.einsum("bcm,cmw->bcw", chunks, self.enc_weight) + self.enc_bias
        return self.enc_mix(F.leaky_relu(h, 0.2).flatten(1))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.dec_mix(z), 0.2).view(len(z), self.chunks, self.width)
        out = torch.einsum("bcw,cwm->bcm", h, self.dec_weight) + self.dec_bias
        return out.reshape(len(z), self.length)[:, : self.n_params]

    def forward(self, x: torch.Tensor, noise: Callable[[torch.Size], torch.Tensor] | None = None) -> torch.Tensor:
        """Training pass: noise on the input, noise on the latent, reconstruct the clean input."""
        randn = noise or (lambda shape: torch.randn(shape, device=x.device))
        z = self.encode(x + self.cfg.input_noise * randn(x.shape))
        return self.decode(z + self.cfg.latent_noise * randn(z.shape))
