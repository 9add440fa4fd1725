"""Forgetting in linear attention: a per-head exponential decay of the recurrent state.

Plain causal linear attention is a running *mean* over every key so far: at position 20,000 the last
bar weighs 1/20,000 of the average, so a model trained on 512-token crops sees, far past them, a state
it never met, and its attention flattens into a uniform average (measured on the shipped model before
this option: the share of attention on the last 64 tokens was what a uniform average gives). With a
decay gamma = exp(-1/tau) per head the state is S_i = gamma S_{i-1} + k_i [v_i, 1]^T: token j weighs
gamma^(i-j), so each head averages over about its last tau tokens and the state's statistics are the
same at position 600 and at 60,000. Combined with SPE the expected attention kernel stays relative:
gamma^(n-m) [(1-g) P(n-m) + g].

Time constants start geometric between ``tau_min`` and ``tau_max`` over the heads (multi-scale: a
beat, a bar, a phrase, a section); ``learned`` lets training move them (log tau is the parameter, so
steps are relative). The kernels take the rates as log(gamma) = -1/tau.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import DECAYS

__all__ = ["AttentionDecay", "initial_time_constants"]


def initial_time_constants(n_heads: int, tau_min: float, tau_max: float) -> Tensor:
    """Geometric time constants tau_min .. tau_max (tokens), one per head."""
    if n_heads == 1:
        return torch.tensor([math.sqrt(tau_min * tau_max)])
    return torch.logspace(math.log10(tau_min), math.log10(tau_max), n_heads)


class AttentionDecay(nn.Module):
    """Per-head decay rates of one attention layer: ``log_tau`` is a parameter (learned) or a buffer (fixed)."""

    #: every parameter of this module is positional (MusicTransformer.positional_parameter_names)
    holds_positional_parameters = True

    def __init__(self, n_heads: int, mode: str, tau_min: float, tau_max: float) -> None:
        super().__init__()
        if mode not in ("fixed", "learned"):
            raise ValueError(f"attention.decay={mode!r}: expected one of {DECAYS}")
        self.mode = mode
        log_tau = initial_time_constants(n_heads, tau_min, tau_max).log()
        if mode == "learned":
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    def log_gamma(self) -> Tensor:
        """(H,) log(gamma) = -1/tau, in float32 (the kernels run in float32 or float64)."""
        return -torch.exp(-self.log_tau.float())
