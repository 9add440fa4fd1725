"""Reference implementations of the model's kernels, for the tests only (plain maths, float64-friendly,
autograd through everything): what the fast kernels in musicgen/model/ops are checked against."""

from __future__ import annotations

import torch
from torch import Tensor

from musicgen.model.ops.linear_attention import EPS
from musicgen.model.ops.linear_attention.utils import with_ones
from musicgen.model.ops.sine_filter import SineCodes

__all__ = ["causal_linear_attention_naive", "chunked_causal_product_loop", "materialise_sine_codes"]


def causal_linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, eps: float = EPS,
                                  log_gamma: Tensor | None = None, initial: Tensor | None = None) -> Tensor:
    """Quadratic masked reference of ``causal_linear_attention``: the (L x L) weights gamma^(i-j) (q_i·k_j)
    for j <= i, plus gamma^(i+1) q_i·S_initial."""
    length = q.shape[2]
    scores = q @ k.transpose(-1, -2)
    if log_gamma is not None:
        t = torch.arange(length, dtype=q.dtype, device=q.device)
        lag = (t.view(-1, 1) - t.view(1, -1)).clamp(min=0)
        scores = scores * torch.exp(log_gamma.to(q.dtype).view(-1, 1, 1) * lag)
    num = scores.tril() @ with_ones(v)
    if initial is not None:
        carry = q @ initial.to(q.dtype)
        if log_gamma is not None:
            t = torch.arange(1, length + 1, dtype=q.dtype, device=q.device)
            carry = carry * torch.exp(log_gamma.to(q.dtype).view(-1, 1, 1) * t.view(-1, 1))
        num = num + carry
    return num[..., :-1] / (num[..., -1:] + eps)


def chunked_causal_product_loop(q: Tensor, k: Tensor, v: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Unnormalised chunked causal product and final state: a Python loop over chunks, autograd through it
    (the first version of the training kernel; slicing made its backward quadratic)."""
    b, h, _, f = q.shape
    state = q.new_zeros(b, h, f, v.shape[-1])
    outs: list[Tensor] = []
    for qc, kc, vc in zip(q.split(chunk_size, 2), k.split(chunk_size, 2), v.split(chunk_size, 2)):
        intra = (qc @ kc.transpose(-1, -2)).tril() @ vc
        outs.append(torch.baddbmm(intra.flatten(0, 1), qc.flatten(0, 1), state.flatten(0, 1)).view_as(intra))
        state = state + kc.transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2), state


def materialise_sine_codes(codes: SineCodes, length: int) -> tuple[Tensor, Tensor]:
    """The (L, H, d, R) query and key codes that factorised SineSPE codes stand for."""
    c = codes.chunk
    n = torch.arange(length, device=codes.omega.device)
    om = codes.omega[:, :, n % c]  # (H, 2, L, J, d)
    w = codes.weights[n // c]  # (L, H, J, d, R)
    return (
        torch.einsum("hljd,lhjdr->lhdr", om[:, 0], w),
        torch.einsum("hljd,lhjdr->lhdr", om[:, 1], w),
    )
