"""Recurrent form of causal linear attention: one token at a time, from a state to the next state.

The state S (B, H, F, D+1) holds sum_j gamma^(i-j) k_j [v_j, 1]^T (its last column is the normaliser z),
the same tensor the chunked kernel takes as ``initial`` and returns as its final state, so a prompt
prefilled in parallel continues here token by token, and back.

* :func:`linear_attention_step` — functional (returns a new state), any dtype, autograd-friendly.
* :func:`linear_attention_step_` — the generation hot path: updates S in place, inputs in the layouts the
  lean step of :class:`~musicgen.model.attention.CausalSelfAttention` produces them (no copies).
Same maths, different float rounding only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .utils import EPS, with_ones

__all__ = ["linear_attention_step", "linear_attention_step_"]


def linear_attention_step(
    q: Tensor, k: Tensor, v: Tensor, state: Tensor, eps: float = EPS, log_gamma: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One recurrent step. q, k: (B, H, F); v: (B, H, D); state: (B, H, F, D+1); log_gamma: (H,) or None.

    The current token attends to itself (j <= i), so the state is updated (decayed by gamma, then
    the new key added) before it is read. Cost and memory are independent of the position.
    """
    dtype = state.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = q.to(dtype), k.to(dtype)
        v1 = with_ones(v.to(dtype))
        if log_gamma is not None:
            state = state * torch.exp(log_gamma.to(dtype)).view(1, -1, 1, 1)
        state = state + k.unsqueeze(-1) * v1.unsqueeze(-2)
        num = (q.unsqueeze(-2) @ state).squeeze(-2)
        out = num[..., :-1] / (num[..., -1:] + eps)
    return out, state


def linear_attention_step_(
    state: Tensor, q: Tensor, k: Tensor, v1: Tensor, gamma: Tensor | None, eps: float = EPS
) -> Tensor:
    """One step in place. state (B, H, F, D+1) float32 contiguous, updated; q, k: (H, B, F) (any strides);
    v1: (B, H, D+1) with v in [..., :D] and ones in the last column; gamma: (1, H, 1, 1) or None.
    Returns out (B H, 1, D)."""
    b, h, _, dv = state.shape
    d = dv - 1
    if gamma is not None:
        state.mul_(gamma)
    state.addcmul_(k.transpose(0, 1).unsqueeze(-1), v1.unsqueeze(-2))
    q = q.transpose(0, 1).reshape(b * h, 1, -1)
    num = torch.bmm(q, state.view(b * h, -1, dv))  # (B H, 1, D+1)
    return num[..., :d] / num[..., d:].add(eps)
