"""The generated parameter subset: which parameters, flattened to one vector and back."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["ParameterSubset"]


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

    def freeze_others(self, model: nn.Module) -> None:
        """Only the subset keeps requires_grad."""
        chosen = set(self.names)
        for name, p in model.named_parameters():
            p.requires_grad_(name in chosen)

    def call(self, model: nn.Module, vector: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Run `model` on `x` with the subset replaced by `vector`, without touching the model."""
        return functional_call(model, self.unflatten(vector.to(x.device)), (x,))
