"""The generated parameter subset: which parameters, flattened to one vector and back.

A subset is named by fnmatch patterns over parameter names; `WHOLE_NETWORK` (["*"]) names every parameter,
in any architecture of the zoo. What a vector does not hold (the parameters outside the subset and every
buffer: BatchNorm running statistics and counters) is the network's *frozen state*: kept from the source
and stored with the cell (`frozen_state`), never generated. A generated vector is a network only together
with it (`assemble`). Collection runs BatchNorm in eval mode by default, so these buffers are exactly the
ones every snapshot was trained and scored with (measured against collecting them with the snapshots:
`python -m benchmarks.whole_network --buffers`).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["ParameterSubset", "WHOLE_NETWORK"]

WHOLE_NETWORK = ("*",)  # the patterns that name every parameter: the whole network is the subset


@dataclass(frozen=True)
class ParameterSubset:
    """An ordered set of named parameters of one architecture, viewed as a flat float32 vector."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def select(cls, model: nn.Module, patterns: Sequence[str]) -> "ParameterSubset":
        """Parameters whose names match any fnmatch pattern, in the model's own order."""
        params = dict(model.named_parameters())
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in params)]
        if unmatched:
            sample = ", ".join(list(params)[-6:])
            raise ValueError(f"subset pattern(s) {unmatched} match no parameter (last parameters: {sample})")
        names = tuple(n for n in params if any(fnmatch.fnmatchcase(n, p) for p in patterns))
        return cls(names, tuple(params[n].shape for n in names))

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.sizes)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """The subset of `model` as one detached float32 vector on the CPU."""
        params = dict(model.named_parameters())
        return torch.cat([params[n].detach().reshape(-1).float().cpu() for n in self.names])

    def unflatten(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a vector (..., numel) into named tensors (..., *shape); a leading batch dim is kept."""
        if vector.shape[-1] != self.numel:
            raise ValueError(f"vector has {vector.shape[-1]} entries, the subset has {self.numel}")
        lead = vector.shape[:-1]
        chunks = vector.split(self.sizes, dim=-1)
        return {n: c.reshape(*lead, *s) for n, c, s in zip(self.names, chunks, self.shapes)}

    @torch.no_grad()
    def load(self, model: nn.Module, vector: torch.Tensor) -> None:
        """Copy a vector into the model's subset parameters, in place."""
        params = dict(model.named_parameters())
        for name, value in self.unflatten(vector).items():
            params[name].copy_(value)

    def frozen_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Everything in `model`'s state the vector does not hold, as detached CPU copies: the parameters
        outside the subset and every buffer (for a whole network: the buffers alone)."""
        chosen = set(self.names)
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in chosen}

    def assemble(self, model: nn.Module, state: dict[str, torch.Tensor], vector: torch.Tensor) -> nn.Module:
        """`model` (e.g. freshly built) turned into the network of `vector`: `state` (from `frozen_state`)
        and the vector loaded strictly, so a state that lacks an entry (a dropped buffer) raises. In eval mode."""
        model.load_state_dict(state | self.unflatten(vector.detach().cpu()), strict=True)
        return model.eval()

    def freeze_others(self, model: nn.Module) -> None:
        """Only the subset keeps requires_grad."""
        chosen = set(self.names)
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)

    def call(self, model: nn.Module, vector: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Run `model` on `x` with the subset replaced by `vector`, without touching the model."""
        return functional_call(model, self.unflatten(vector.to(x.device)), (x,))
