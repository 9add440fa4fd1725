"""Absolute positional embeddings (``pe.kind: ape``), added to the token embedding.

* ``sinusoidal``: Vaswani et al.'s fixed sines, computed on the fly for any position (no maximum
  length at generation, though the model never saw those positions in training).
* ``learned``: a (max_len, d_model) table; positions >= max_len raise a clear error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["SinusoidalPositions", "LearnedPositions", "build_ape"]


class SinusoidalPositions(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        inv = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        """positions (L,) integer -> (L, d_model)."""
        ang = positions.to(torch.float32).unsqueeze(-1) * self.inv_freq
        out = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).flatten(-2)
        return out[..., : self.d_model]


class LearnedPositions(nn.Module):
    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.table = nn.Embedding(max_len, d_model)
        nn.init.normal_(self.table.weight, std=1.0)

    def forward(self, positions: Tensor) -> Tensor:
        if positions.numel() and int(positions.max()) >= self.max_len:
            raise ValueError(
                f"learned absolute positions only cover 0..{self.max_len - 1} (pe.max_len); got position "
                f"{int(positions.max())}. Use pe.kind spe_sine/spe_conv/none or ape: sinusoidal for longer sequences."
            )
        return self.table(positions)


def build_ape(kind: str, d_model: int, max_len: int) -> nn.Module:
    if kind == "sinusoidal":
        return SinusoidalPositions(d_model)
    if kind == "learned":
        return LearnedPositions(d_model, max_len)
    raise ValueError(f"unknown pe.ape {kind!r} (expected 'learned' or 'sinusoidal')")
