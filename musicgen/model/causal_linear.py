"""Causal linear attention kernels.

Given positive features q, k of shape (B, H, L, F) and values v (B, H, L, D), compute

    out_i = q_i · S_i / (q_i · z_i + eps),   S_i = sum_{j<=i} k_j v_j^T,   z_i = sum_{j<=i} k_j

Three implementations with the same maths:

* :func:`chunked_causal_product` — the training kernel, plain PyTorch, any device: a
  ``torch.autograd.Function`` with a hand-written backward. The sequence is cut into chunks of
  C tokens; within a chunk the exact masked (C x C) product is used, across chunks the carried
  (F x D) state, computed for all chunks at once as an exclusive cumsum of per-chunk K^T V
  (batched matmuls, no Python loop): O(L C (F + D) + L F D) time, O(L/C) saved states, and
  the backward saves only q, k, v and the chunk states (autograd through a loop saved every
  intermediate). :func:`chunked_causal_product_loop` is the loop form, kept as a reference.
* :func:`naive_causal_product` — quadratic masked reference for tests.
* ``fast_transformers`` — pytorch-fast-transformers' CUDA/C++ ``causal_dot_product``.

The normaliser is computed together with the numerator by appending a column of ones to v,
so the carried state is (F x (D+1)) and doubles as the recurrent generation state.
Everything runs in float32 (float64 if given) with autocast disabled: the state is a running
sum over thousands of tokens and performer features exceed fp16's range.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "FastTransformersMissing",
    "require_fast_transformers",
    "causal_linear_attention",
    "causal_linear_attention_naive",
    "chunked_causal_product",
    "chunked_causal_product_loop",
    "naive_causal_product",
    "linear_attention_step",
]

EPS = 1e-6
_FAST_HINT = (
    "attention.backend=fast_transformers needs the optional package pytorch-fast-transformers: "
    "install it with `pip install .[fast]` (the `fast` extra of musicgen), or use attention.backend=torch."
)


class FastTransformersMissing(ImportError):
    """Raised when ``backend: fast_transformers`` is requested but the package is not installed."""


def require_fast_transformers():
    """Return fast_transformers' ``causal_dot_product`` or raise a clear, actionable error."""
    try:
        from fast_transformers.causal_product import causal_dot_product  # type: ignore
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FastTransformersMissing(_FAST_HINT) from exc
    return causal_dot_product


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _with_ones(v: Tensor) -> Tensor:
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def _chunked(x: Tensor, chunk_size: int) -> Tensor:
    """(B, H, L, X) -> (B*H*N, C, X) with N = ceil(L / C), zero-padded at the end if needed."""
    b, h, length, width = x.shape
    n = -(-length // chunk_size)
    if n * chunk_size != length:
        x = torch.nn.functional.pad(x, (0, 0, 0, n * chunk_size - length))
    return x.reshape(b * h * n, chunk_size, width)


def _exclusive_cumsum(x: Tensor, reverse: bool = False) -> Tensor:
    """x (G, N, F, D) -> (G, N, F, D) with out[:, c] = sum over chunks before c (after c if reverse).

    Sums run chunk by chunk in order, exactly like a carried state updated in a loop.
    """
    g, n = x.shape[:2]
    out = x.new_zeros(x.shape)
    if n > 1:
        if reverse:
            out[:, :-1] = x[:, 1:].flip(1).cumsum(1).flip(1)
        else:
            out[:, 1:] = x[:, :-1].cumsum(1)
    return out


class _ChunkedCausalProduct(torch.autograd.Function):
    """num_i = sum_{j<=i} (q_i·k_j) v_j and the final state sum_j k_j v_j^T, chunk-parallel.

    Forward: per chunk of C tokens the exact masked (C x C) product, across chunks the state
    S_c = sum_{chunks before c} K^T V, obtained for all chunks at once as an exclusive cumsum of
    the per-chunk K_c^T V_c (same summation order as a carried state): a handful of batched
    matmuls, no Python loop over chunks. Saves q, k, v and the (L/C) chunk states.
    Backward (hand-written, same structure): with A_c = tril(Q_c K_c^T), dA_c = tril(dO_c V_c^T)
    and R_c = dS_final + sum_{chunks after c} Q^T dO (reverse exclusive cumsum),
        dQ_c = dA_c K_c + dO_c S_c^T,  dK_c = dA_c^T Q_c + V_c R_c^T,  dV_c = A_c^T dO_c + K_c R_c.
    Always runs with autocast off in the input dtype (float32 / float64).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        b, h, length, f = q.shape
        d = v.shape[-1]
        n = -(-length // chunk_size)
        qc, kc, vc = (_chunked(x, chunk_size) for x in (q, k, v))  # (G N, C, .)
        kv = torch.bmm(kc.transpose(1, 2), vc).view(b * h, n, f, d)
        states = _exclusive_cumsum(kv)  # state before each chunk
        final = states[:, -1] + kv[:, -1]
        intra = torch.bmm(qc, kc.transpose(1, 2)).tril_()
        num = torch.baddbmm(torch.bmm(intra, vc), qc, states.view(-1, f, d))
        ctx.save_for_backward(qc, kc, vc, states)
        ctx.shape = (b, h, length, f, d, chunk_size)
        ctx.set_materialize_grads(False)
        num = num.view(b, h, n * chunk_size, d)
        return (num if n * chunk_size == length else num[:, :, :length]), final.view(b, h, f, d)

    @staticmethod
    def backward(ctx, d_num: Tensor | None, d_final: Tensor | None):
        qc, kc, vc, states = ctx.saved_tensors
        b, h, length, f, d, chunk = ctx.shape
        n = states.shape[1]
        with torch.autocast(device_type=qc.device.type, enabled=False):
            if d_num is None:
                d_num = qc.new_zeros(b, h, length, d)
            do = _chunked(d_num.to(qc.dtype), chunk)  # (G N, C, D)
            d_intra = torch.bmm(do, vc.transpose(1, 2)).tril_()  # dA
            dq = torch.baddbmm(torch.bmm(d_intra, kc), do, states.view(-1, f, d).transpose(1, 2))
            future = _exclusive_cumsum(torch.bmm(qc.transpose(1, 2), do).view(b * h, n, f, d), reverse=True)
            if d_final is not None:
                future += d_final.to(qc.dtype).reshape(b * h, 1, f, d)
            future = future.view(-1, f, d)
            intra = torch.bmm(qc, kc.transpose(1, 2)).tril_()
            dv = torch.baddbmm(torch.bmm(intra.transpose(1, 2), do), kc, future)
            dk = torch.baddbmm(torch.bmm(d_intra.transpose(1, 2), qc), vc, future.transpose(1, 2))

        def unchunk(x: Tensor) -> Tensor:
            x = x.view(b, h, n * chunk, x.shape[-1])
            return x if n * chunk == length else x[:, :, :length]

        return unchunk(dq), unchunk(dk), unchunk(dv), None


def chunked_causal_product(q: Tensor, k: Tensor, v: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """sum_{j<=i} (q_i·k_j) v_j for all i, plus the final state sum_j k_j v_j^T.

    q, k: (B, H, L, F); v: (B, H, L, D) of the same dtype. Returns ((B, H, L, D), (B, H, F, D)).
    See :class:`_ChunkedCausalProduct` (hand-written backward).
    """
    return _ChunkedCausalProduct.apply(q, k, v, int(chunk_size))


def chunked_causal_product_loop(q: Tensor, k: Tensor, v: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Reference chunked kernel: Python loop over chunks, autograd through it (tests only)."""
    b, h, _, f = q.shape
    state = q.new_zeros(b, h, f, v.shape[-1])
    outs: list[Tensor] = []
    for qc, kc, vc in zip(q.split(chunk_size, 2), k.split(chunk_size, 2), v.split(chunk_size, 2)):
        intra = (qc @ kc.transpose(-1, -2)).tril() @ vc
        outs.append(torch.baddbmm(intra.flatten(0, 1), qc.flatten(0, 1), state.flatten(0, 1)).view_as(intra))
        state = state + kc.transpose(-1, -2) @ vc
    return torch.cat(outs, dim=2), state


def naive_causal_product(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Quadratic reference: (tril(q k^T)) v."""
    return (q @ k.transpose(-1, -2)).tril() @ v


def _fast_causal_product(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    causal_dot_product = require_fast_transformers()
    num = causal_dot_product(q.contiguous(), k.contiguous(), v.contiguous())
    state = torch.einsum("bhlf,bhld->bhfd", k, v)
    return num, state


def causal_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chunk_size: int = 64,
    backend: str = "torch",
    eps: float = EPS,
    return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Normalised causal linear attention. q, k: (B, H, L, F) positive; v: (B, H, L, D).

    Returns out (B, H, L, D) in the compute dtype (float32, or float64 for float64 inputs) and,
    with ``return_state``, the recurrent state (B, H, F, D+1) after the last token (used to
    continue generation from a prompt).
    """
    dtype = _compute_dtype(q)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = q.to(dtype), k.to(dtype)
        v1 = _with_ones(v.to(dtype))
        if backend == "torch":
            num, state = chunked_causal_product(q, k, v1, chunk_size)
        elif backend == "fast_transformers":
            num, state = _fast_causal_product(q, k, v1)
        else:
            raise ValueError(f"unknown attention.backend {backend!r} (expected 'torch' or 'fast_transformers')")
        numer, denom = num.split([num.shape[-1] - 1, 1], dim=-1)  # split: no zero-filled slice grads
        out = numer / (denom + eps)
    return (out, state) if return_state else out


def causal_linear_attention_naive(q: Tensor, k: Tensor, v: Tensor, eps: float = EPS) -> Tensor:
    """Quadratic masked reference of :func:`causal_linear_attention` (tests only)."""
    num = naive_causal_product(q, k, _with_ones(v))
    return num[..., :-1] / (num[..., -1:] + eps)


def linear_attention_step(
    q: Tensor, k: Tensor, v: Tensor, state: Tensor, eps: float = EPS
) -> tuple[Tensor, Tensor]:
    """One recurrent step. q, k: (B, H, F); v: (B, H, D); state: (B, H, F, D+1).

    The current token attends to itself (j <= i), so the state is updated before it is read.
    Cost and memory are independent of the position.
    """
    dtype = state.dtype
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k = q.to(dtype), k.to(dtype)
        v1 = _with_ones(v.to(dtype))
        state = state + k.unsqueeze(-1) * v1.unsqueeze(-2)
        num = (q.unsqueeze(-2) @ state).squeeze(-2)
        out = num[..., :-1] / (num[..., -1:] + eps)
    return out, state
