"""Shared constants and helpers of the linear-attention kernels."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["EPS", "resolve_chunk_size", "compute_dtype", "with_ones"]

#: added to the normaliser q·z of every output (all forms: chunked, recurrent, lean step)
EPS = 1e-6


def resolve_chunk_size(chunk_size: int | str, device: torch.device) -> int:
    """``attention.chunk_size``: an integer, or ``auto`` = 64 on a CPU (chunk-sized products stay
    in cache) and 256 on a GPU (the loop is launch-bound there: fewer, larger products)."""
    if chunk_size == "auto":
        return 64 if device.type == "cpu" else 256
    return int(chunk_size)



def compute_dtype(x: Tensor) -> torch.dtype:
    """float64 inputs stay float64; everything else runs in float32 (the state is a sum over thousands of tokens)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def with_ones(v: Tensor) -> Tensor:
    """[v, 1]: the ones column makes the normaliser z a column of the same product as the numerator."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)
