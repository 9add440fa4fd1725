"""Reference implementations of the model's kernels, for the tests only (plain maths, float64-friendly,
autograd through everything): what the fast kernels in musicgen/model/ops are checked against."""

from __future__ import annotations

import torch
from torch import Tensor

from musicgen.model.ops.linear_attention import EPS
from musicgen.model.ops.linear_attention.utils import with_ones
from musicgen.model.ops.sine_filter import SineCodes

__all__ = ["causal_linear_attention_naive", "chunked_causal_product_loop", "materialise_sine_codes",
           "simple_gla_contract"]


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


def simple_gla_contract(q: Tensor, k: Tensor, v: Tensor, g: Tensor | None = None, g_gamma: Tensor | None = None,
                        scale: float | None = None, initial_state: Tensor | None = None,
                        output_final_state: bool = False, **_: object) -> tuple[Tensor, Tensor | None]:
    """fla 0.6's documented contract of ``fla.ops.simple_gla.chunk_simple_gla``, in plain (quadratic) torch, to
    test our adapter on a CPU (fla's Triton kernels cannot run there, not even under TRITON_INTERPRET=1).

    q, k (B, T, H, K), v (B, T, H, V), g (B, T, H) per-token log decay or g_gamma (H,) per-head log decay,
    initial_state (N, H, K, V): o_t = scale q_t S_t, S_t = exp(g_t) S_{t-1} + k_t v_t^T. Mirrors fla's dtypes
    (o in q's dtype, the final state float32), its default scale K^-1/2, and its backward, which returns no
    gradient for ``g_gamma`` (detached here): an adapter that passed a learned rate as g_gamma would lose it.
    Not the real kernel: the real-kernel parity tests run on CUDA (tests/test_fla_backend.py)."""
    if (g is None) == (g_gamma is None) and g is not None:
        raise ValueError("only one of g or g_gamma")
    b, t, h, kd = q.shape
    wide = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = kd ** -0.5 if scale is None else scale
    qf, kf, vf = (x.to(wide).transpose(1, 2) for x in (q, k, v))  # (B, H, T, .)
    if g is not None:
        cum = g.to(wide).transpose(1, 2).cumsum(-1)  # (B, H, T): G_t = sum_{s<=t} g_s
    elif g_gamma is not None:
        steps = torch.arange(1, t + 1, dtype=wide, device=q.device)
        cum = (g_gamma.detach().to(wide).view(1, h, 1) * steps).expand(b, h, t)
    else:
        cum = torch.zeros(b, h, t, dtype=wide, device=q.device)
    lag = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).tril()  # G_i - G_j for j <= i
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    weights = torch.where(mask, torch.exp(lag), torch.zeros((), dtype=wide, device=q.device))
    o = ((qf @ kf.transpose(-1, -2)) * weights) @ vf
    final = torch.einsum("bhj,bhjk,bhjv->bhkv", torch.exp(cum[..., -1:] - cum), kf, vf)
    if initial_state is not None:
        s0 = initial_state.to(wide)
        o = o + (qf * torch.exp(cum).unsqueeze(-1)) @ s0
        final = final + torch.exp(cum[..., -1]).view(b, h, 1, 1) * s0
    o = (scale * o).transpose(1, 2).to(q.dtype)
    return o, (final.to(wide) if output_final_state else None)
