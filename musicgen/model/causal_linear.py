"""Causal linear attention kernels.

Given positive features q, k of shape (B, H, L, F) and values v (B, H, L, D), compute

    out_i = q_i · S_i / (q_i · z_i + eps),   S_i = sum_{j<=i} k_j v_j^T,   z_i = sum_{j<=i} k_j

Three implementations with the same maths:

* :func:`chunked_causal_product` — the training kernel, plain PyTorch, any device: a
  ``torch.autograd.Function`` with a hand-written backward. The sequence is cut into chunks of
  C tokens (``Tensor.split``); within a chunk the exact masked (C x C) product is used, across
  chunks a carried (F x D) state: O(L C (F + D) + L F D) time. The backward saves only q, k, v
  and the L/C chunk states (autograd through the loop kept every intermediate) and runs the
  chunks in reverse with a carried state for the key/value gradients.
  :func:`chunked_causal_product_loop` is the autograd-through-the-loop form, kept as a reference.
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


class _ChunkedCausalProduct(torch.autograd.Function):
    """num_i = sum_{j<=i} (q_i·k_j) v_j and the final state sum_j k_j v_j^T, chunk by chunk.

    Forward: chunks of C tokens (``Tensor.split``: views, no copies); within a chunk the exact
    masked (C x C) product, across chunks a carried (F x D) state S_c (sum over the chunks
    before c). Saves q, k, v and the L/C chunk states only (autograd through the loop would
    keep every chunk's (C x C) products, partial states and their gradient buffers).
    Backward, hand-written, one loop in reverse with a carried R_c = dS_final + sum over the
    chunks after c of Q^T dO; with A_c = tril(Q_c K_c^T) and dA_c = tril(dO_c V_c^T):
        dQ_c = dA_c K_c + dO_c S_c^T,  dK_c = dA_c^T Q_c + V_c R_c^T,  dV_c = A_c^T dO_c + K_c R_c.
    Chunk-sized working sets stay in cache (a fully batched version over all chunks was
    slower on CPU: memory-bound). Runs in the input dtype with autocast off.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
        b, h, _, f = q.shape
        d = v.shape[-1]
        state = q.new_zeros(b * h, f, d)
        states, outs = [], []
        for qc, kc, vc in zip(q.split(chunk_size, 2), k.split(chunk_size, 2), v.split(chunk_size, 2)):
            qc, kc, vc = qc.flatten(0, 1), kc.flatten(0, 1), vc.flatten(0, 1)
            states.append(state)
            intra = torch.bmm(qc, kc.transpose(1, 2)).tril_()
            outs.append(torch.baddbmm(torch.bmm(intra, vc), qc, state))
            state = torch.baddbmm(state, kc.transpose(1, 2), vc)
        ctx.save_for_backward(q, k, v, *states)
        ctx.chunk_size = chunk_size
        ctx.set_materialize_grads(False)
        return torch.cat(outs, dim=1).view(b, h, -1, d), state.view(b, h, f, d)

    @staticmethod
    def backward(ctx, d_num: Tensor | None, d_final: Tensor | None):
        q, k, v, *states = ctx.saved_tensors
        b, h, length, f = q.shape
        d = v.shape[-1]
        chunk = ctx.chunk_size
        with torch.autocast(device_type=q.device.type, enabled=False):
            if d_final is not None:
                future = d_final.to(q.dtype).reshape(b * h, f, d).clone()
            else:
                future = q.new_zeros(b * h, f, d)
            if d_num is None:
                d_num = q.new_zeros(b, h, length, d)
            d_num = d_num.to(q.dtype)
            parts = list(zip(q.split(chunk, 2), k.split(chunk, 2), v.split(chunk, 2), d_num.split(chunk, 2), states))
            dqs, dks, dvs = [], [], []
            for qc, kc, vc, do, state in reversed(parts):
                qc, kc, vc, do = qc.flatten(0, 1), kc.flatten(0, 1), vc.flatten(0, 1), do.flatten(0, 1)
                d_intra = torch.bmm(do, vc.transpose(1, 2)).tril_()
                dqs.append(torch.baddbmm(torch.bmm(d_intra, kc), do, state.transpose(1, 2)))
                intra = torch.bmm(qc, kc.transpose(1, 2)).tril_()
                dvs.append(torch.baddbmm(torch.bmm(intra.transpose(1, 2), do), kc, future))
                dks.append(torch.baddbmm(torch.bmm(d_intra.transpose(1, 2), qc), vc, future.transpose(1, 2)))
                future = torch.baddbmm(future, qc.transpose(1, 2), do)

        def full(chunks: list[Tensor]) -> Tensor:
            return torch.cat(chunks[::-1], dim=1).view(b, h, length, -1)

        return full(dqs), full(dks), full(dvs), None


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
