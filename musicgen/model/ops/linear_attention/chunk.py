"""Parallel (chunked) form of causal linear attention: training and prompt prefill.

Given positive features q, k of shape (B, H, L, F) and values v (B, H, L, D), compute

    out_i = q_i · S_i / (q_i · z_i + eps),   S_i = sum_{j<=i} k_j v_j^T,   z_i = sum_{j<=i} k_j

or, with a per-head decay gamma = exp(log_gamma) (``attention.decay``), S_i = sum_{j<=i} gamma^(i-j) k_j v_j^T
(and z likewise), optionally continuing an initial state S_{-1}, and return the final state S_{L-1}: the
state :mod:`.recurrent` steps from, so prefill, step and chunked continuation share one state.

* :func:`chunked_causal_attention` — the kernel, plain PyTorch, any device: a ``torch.autograd.Function``
  with a hand-written backward. The sequence is cut into chunks of C tokens; within a chunk the exact
  masked (C x C) product is used, across chunks a carried (F x (D+1)) state: O(L C (F + D) + L F D) time.
  Normalisation is fused in, outputs are written chunk by chunk into preallocated tensors, the backward
  saves only q, k, v, the output, the denominators and the L/C chunk states, and runs the chunks in
  reverse with a carried state for the key/value gradients. (Autograd through a loop over
  ``Tensor.split`` chunks, the first version, made the backward quadratic; it is kept with the quadratic
  masked reference in ``tests/reference_kernels.py``.)
* :func:`causal_linear_attention` — the entry point: dtype/autocast handling and the backend choice
  (``torch`` = the kernel above, ``fast_transformers`` = pytorch-fast-transformers' ``causal_dot_product``,
  ``fla`` = flash-linear-attention's Triton kernels on CUDA (:mod:`.fla`), ``auto`` = fla where it applies
  (CUDA tensors, fla installed, not float64), decided per call from the tensors, else torch).

The normaliser is computed together with the numerator by appending a column of ones to v,
so the carried state is (F x (D+1)) and doubles as the recurrent generation state.
Everything runs in float32 (float64 if given) with autocast disabled: the state is a running
sum over thousands of tokens and performer features exceed fp16's range.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from .fast_transformers import fast_causal_product
from .fla import fla_applies, fla_causal_linear_attention
from .utils import EPS, compute_dtype, resolve_chunk_size, with_ones

__all__ = ["causal_linear_attention", "chunked_causal_attention"]


def _split_rows(rows: int, device: torch.device) -> list[slice]:
    """How the (batch x heads) rows of the kernel are shared out: one range per CPU thread.

    The chunk loop is a series of small products that do not keep two cores busy when each is
    split inside (fwd+bwd at 8192 tokens, B=4, H=8, 2 cores: 1.18-1.35x faster with the rows
    split across threads, interleaved runs). On GPUs one range: the device parallelises each product.
    """
    workers = min(torch.get_num_threads(), rows) if device.type == "cpu" else 1
    bounds = [rows * i // workers for i in range(workers + 1)]
    return [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:
    """A forked child inherits the pool object but not its threads: start a fresh one there."""
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def _run_rows(fn: Callable[[slice], None], ranges: list[slice]) -> None:
    """Run ``fn`` on every row range, concurrently on CPU threads when there are several.

    Workers run with one intra-op thread each, gradients off and the caller's inference mode
    (both are thread-local in PyTorch), and write disjoint rows of preallocated tensors.
    """
    global _POOL
    if len(ranges) == 1:
        fn(ranges[0])
        return
    inference = torch.is_inference_mode_enabled()

    def work(rows: slice) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode(inference), torch.no_grad():  # this order: inference_mode(False) enables grad
            fn(rows)

    if _POOL is None or _POOL._max_workers < len(ranges):  # noqa: SLF001 - resize a private pool
        _POOL = ThreadPoolExecutor(max_workers=len(ranges), thread_name_prefix="musicgen-kernel")
    for future in [_POOL.submit(work, r) for r in ranges]:
        future.result()


class _ChunkedCausalAttention(torch.autograd.Function):
    """out_i = q_i·S_i / (q_i·z_i + eps) chunk by chunk, normaliser and division fused in.

    With a per-head decay rate a = log(gamma) < 0 (``log_gamma``, optional) the state forgets:
    S_i = gamma S_{i-1} + k_i [v_i, 1]^T, i.e. token j weighs gamma^(i-j) in position i's average.
    An optional initial state S_{-1} (``initial``) continues a sequence.

    Forward: chunks of C tokens starting at s, state S before the chunk, local index t = 0..n-1:
        num_t = sum_{j<=t} gamma^(t-j) (q_t·k_j) [v_j, 1] + gamma^(t+1) q_t·S
        S'    = gamma^n S + sum_j gamma^(n-1-j) k_j [v_j, 1]^T
    (without decay every gamma power is 1: the plain masked product). The ones column of v gives
    the normaliser z. Each chunk's output is divided and written straight into the preallocated
    result: no full-length temporaries. Saves q, k, v, the output, the denominators and the L/C+1
    chunk states (autograd through the loop would keep every chunk's products and partial states).

    Backward, hand-written, one loop in reverse. The division gives, per row, dnum = dout / den and
    dden = -(dout·out) / den, i.e. dO = [dnum | dden] for the (D+1)-column product; then with the
    carried R = dL/dS' (starting from the final state's gradient), W = gamma^(t-j) tril,
    A = (Q K^T) ⊙ W and dA = (dO V^T) ⊙ W:
        dQ = dA K + gamma^(t+1) dO S^T,  dK = dA^T Q + gamma^(n-1-j) V R^T,
        dV = A^T dO + gamma^(n-1-j) K R,  R <- gamma^n R + (gamma^(t+1) Q)^T dO.
    The rate's gradient needs no extra pass: every pair (i, j) enters with gamma^(i-j), so
    dL/da = sum over pairs of (i-j) x (their term) = sum_i (i-c) (q_i·dq_i - k_i·dk_i)
            + (1+c) <S_-1, dS_-1> + (L-1-c) <dS_final, S_final>
    for any constant c (the initial state is a key at position -1, the final state a query at
    L-1); c = (L-1)/2 keeps the float32 sums small.
    Rows (batch x heads) are independent: on a CPU they are shared out across threads
    (:func:`_split_rows`). Runs in the input dtype with autocast off.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, chunk_size: int, eps: float,
                log_gamma: Tensor | None, initial: Tensor | None) -> tuple[Tensor, Tensor]:
        b, h, length, f = q.shape
        d = v.shape[-1]
        qf, kf, vf = (t.reshape(b * h, length, -1) for t in (q, k, v))
        out = q.new_empty(b * h, length, d)
        den = q.new_empty(b * h, length, 1)
        n_chunks = -(-length // chunk_size)
        states = q.new_empty(n_chunks + 1, b * h, f, d + 1)  # states[c]: the state before chunk c
        rate = None if log_gamma is None else log_gamma.to(q.dtype).repeat(b)  # (B H,) row r -> head r % H
        c0 = min(chunk_size, length)

        def rows_forward(r: slice) -> None:
            ones = q.new_ones(r.stop - r.start, chunk_size, 1)
            state = states[0, r]
            if initial is None:
                state.zero_()
            else:
                state.copy_(initial.reshape(b * h, f, d + 1)[r])
            pw = _decay_powers(rate[r], c0) if rate is not None else None
            for c, s in enumerate(range(0, length, chunk_size)):
                e = min(s + chunk_size, length)
                n = e - s
                qc, kc = qf[r, s:e], kf[r, s:e]
                vc = torch.cat([vf[r, s:e], ones[:, :n]], dim=-1)
                intra = torch.bmm(qc, kc.transpose(1, 2))
                if pw is None:
                    intra.tril_()
                    num = torch.bmm(intra, vc).baddbmm_(qc, state)
                    state = torch.baddbmm(state, kc.transpose(1, 2), vc, out=states[c + 1, r])
                else:
                    intra.mul_(pw.mask[:, :n, :n])
                    num = torch.bmm(intra, vc).baddbmm_(qc * pw.query[:, :n], state)
                    kw = kc * pw.key_weights(n)
                    state = torch.baddbmm(state * pw.total(n), kw.transpose(1, 2), vc, out=states[c + 1, r])
                torch.add(num[..., d:], eps, out=den[r, s:e])
                torch.div(num[..., :d], den[r, s:e], out=out[r, s:e])

        _run_rows(rows_forward, _split_rows(b * h, q.device))
        ctx.save_for_backward(qf, kf, vf, out, den, states, rate)
        ctx.chunk_size = chunk_size
        ctx.heads = (b, h)
        ctx.has_rate = log_gamma is not None
        ctx.has_initial = initial is not None
        ctx.set_materialize_grads(False)
        return out.view(b, h, length, d), states[-1].view(b, h, f, d + 1)

    @staticmethod
    def backward(ctx, d_out: Tensor | None, d_final: Tensor | None):
        qf, kf, vf, out, den, states, rate = ctx.saved_tensors
        bh, length, f = qf.shape
        d = vf.shape[-1]
        b, h = ctx.heads
        chunk = ctx.chunk_size
        if d_out is None and d_final is None:
            return None, None, None, None, None, None, None
        with torch.autocast(device_type=qf.device.type, enabled=False):
            g_all = None if d_out is None else d_out.to(qf.dtype).reshape(bh, length, d)
            g_final = None if d_final is None else d_final.to(qf.dtype).reshape(bh, f, d + 1)
            dq, dk, dv = torch.empty_like(qf), torch.empty_like(kf), torch.empty_like(vf)
            d_initial = qf.new_empty(bh, f, d + 1) if ctx.has_initial else None
            c0 = min(chunk, length)

            def rows_backward(r: slice) -> None:
                n_rows = r.stop - r.start
                future = g_final[r].clone() if g_final is not None else qf.new_zeros(n_rows, f, d + 1)
                ones = qf.new_ones(n_rows, chunk, 1)
                do = qf.new_zeros(n_rows, chunk, d + 1)
                pw = _decay_powers(rate[r], c0) if rate is not None else None
                starts = list(range(0, length, chunk))
                for c in reversed(range(len(starts))):
                    s = starts[c]
                    e = min(s + chunk, length)
                    n = e - s
                    qc, kc = qf[r, s:e], kf[r, s:e]
                    vc = torch.cat([vf[r, s:e], ones[:, :n]], dim=-1)
                    doc = do[:, :n]
                    if g_all is not None:
                        torch.div(g_all[r, s:e], den[r, s:e], out=doc[..., :d])
                        torch.sum(doc[..., :d] * out[r, s:e], dim=-1, keepdim=True, out=doc[..., d:]).neg_()
                    d_intra = torch.bmm(doc, vc.transpose(1, 2))
                    intra = torch.bmm(qc, kc.transpose(1, 2))
                    if pw is None:
                        d_intra.tril_()
                        intra.tril_()
                        dq[r, s:e] = torch.bmm(d_intra, kc).baddbmm_(doc, states[c, r].transpose(1, 2))
                        dv[r, s:e] = torch.bmm(intra.transpose(1, 2), doc).baddbmm_(kc, future)[..., :d]
                        dk[r, s:e] = torch.bmm(d_intra.transpose(1, 2), qc).baddbmm_(vc, future.transpose(1, 2))
                        future = torch.baddbmm(future, qc.transpose(1, 2), doc)
                    else:
                        mask, kw = pw.mask[:, :n, :n], pw.key_weights(n)
                        d_intra.mul_(mask)
                        intra.mul_(mask)
                        dq[r, s:e] = torch.bmm(d_intra, kc).addcmul_(
                            pw.query[:, :n], torch.bmm(doc, states[c, r].transpose(1, 2)))
                        dv[r, s:e] = torch.bmm(intra.transpose(1, 2), doc).addcmul_(kw, torch.bmm(kc, future))[..., :d]
                        dk[r, s:e] = torch.bmm(d_intra.transpose(1, 2), qc).addcmul_(
                            kw, torch.bmm(vc, future.transpose(1, 2)))
                        future = torch.baddbmm(future * pw.total(n), (qc * pw.query[:, :n]).transpose(1, 2), doc)
                if d_initial is not None:
                    d_initial[r] = future

            _run_rows(rows_backward, _split_rows(bh, qf.device))
            d_rate = None
            if ctx.has_rate and ctx.needs_input_grad[5]:
                centre = (length - 1) / 2
                pos = torch.arange(length, device=qf.device, dtype=qf.dtype) - centre
                per_token = (qf * dq).sum(-1) - (kf * dk).sum(-1)  # (B H, L)
                d_rows = per_token @ pos
                if g_final is not None:
                    d_rows = d_rows + (length - 1 - centre) * (g_final * states[-1]).sum((-1, -2))
                if d_initial is not None:
                    d_rows = d_rows + (1 + centre) * (states[0] * d_initial).sum((-1, -2))
                d_rate = d_rows.view(b, h).sum(0)
        shape = (b, h, length)
        d_init = d_initial.view(b, h, f, d + 1) if d_initial is not None else None
        return dq.view(*shape, f), dk.view(*shape, f), dv.view(*shape, d), None, None, d_rate, d_init


@dataclass
class _DecayPowers:
    """Powers of gamma for one range of rows and chunks of (at most) C tokens: the decay mask
    W[t, j] = gamma^(t-j) (j <= t, else 0), the query weights gamma^(t+1) and gamma^(C-1-j).
    Built from exp(a x m) directly (never by division), so small gammas underflow to 0, not inf."""

    mask: Tensor  # (rows, C, C)
    query: Tensor  # (rows, C, 1): gamma^(t+1)
    rate: Tensor  # (rows, 1, 1): a = log gamma

    def key_weights(self, n: int) -> Tensor:
        """gamma^(n-1-j) for j < n: (rows, n, 1), how much key j still counts at the chunk's end
        (the mask's row n-1)."""
        return self.mask[:, n - 1, :n].unsqueeze(-1)

    def total(self, n: int) -> Tensor:
        """gamma^n: (rows, 1, 1)."""
        return self.query[:, n - 1 : n]


def _decay_powers(rate: Tensor, chunk: int) -> _DecayPowers:
    t = torch.arange(chunk, device=rate.device, dtype=rate.dtype)
    lag = t.view(-1, 1) - t.view(1, -1)
    a = rate.view(-1, 1, 1)
    mask = torch.exp(a * lag.clamp(min=0)).tril_()
    query = torch.exp(a * (t + 1).view(1, -1, 1))
    return _DecayPowers(mask, query, a)


def chunked_causal_attention(
    q: Tensor, k: Tensor, v: Tensor, chunk_size: int, eps: float = EPS,
    log_gamma: Tensor | None = None, initial: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Normalised causal linear attention and its final state, chunk by chunk.

    q, k: (B, H, L, F); v: (B, H, L, D) of the same dtype; ``log_gamma``: (H,) per-head decay rates
    log(gamma) <= 0 or None (no forgetting); ``initial``: (B, H, F, D+1) state to continue from, or
    None. Returns (out (B, H, L, D), state (B, H, F, D+1)). See :class:`_ChunkedCausalAttention`.
    """
    return _ChunkedCausalAttention.apply(q, k, v, int(chunk_size), float(eps), log_gamma, initial)


def causal_linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chunk_size: int | str = "auto",
    backend: str = "torch",
    eps: float = EPS,
    return_state: bool = False,
    log_gamma: Tensor | None = None,
    initial: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Normalised causal linear attention. q, k: (B, H, L, F) positive; v: (B, H, L, D).

    ``log_gamma`` (H,): per-head forgetting rates (state S_i = gamma S_{i-1} + k_i [v_i, 1]^T);
    ``initial`` (B, H, F, D+1): the state to continue from (prefill of a continued sequence).
    Returns out (B, H, L, D) in the compute dtype (float32, or float64 for float64 inputs) and,
    with ``return_state``, the recurrent state (B, H, F, D+1) after the last token (used to
    continue generation from a prompt).

    ``backend``: ``torch`` | ``fast_transformers`` | ``fla`` | ``auto``. ``auto`` is resolved here, at call
    time, from the tensors: a model built with it runs the torch kernel on a CPU (bit for bit the ``torch``
    backend) and fla's kernels on CUDA when fla is installed. The fla path picks its own precision
    (bfloat16 under autocast, see :mod:`.fla`); the others run in float32 (or float64) with autocast off.
    ``chunk_size`` only applies to the torch kernel (fla tiles by 64 internally).
    """
    if backend == "auto":
        backend = "fla" if fla_applies(q) else "torch"
    if backend == "fla":
        out, state = fla_causal_linear_attention(q, k, v, eps, log_gamma, initial)
        return (out, state) if return_state else out
    dtype = compute_dtype(q)
    with torch.autocast(device_type=q.device.type, enabled=False):
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        if log_gamma is not None:
            log_gamma = log_gamma.to(dtype)
        if initial is not None:
            initial = initial.to(dtype)
        if backend == "torch":
            out, state = chunked_causal_attention(q, k, v, resolve_chunk_size(chunk_size, q.device), eps,
                                                  log_gamma, initial)
        elif backend == "fast_transformers":
            if log_gamma is not None or initial is not None:
                raise ValueError("attention.backend=fast_transformers supports neither attention.decay nor an "
                                 "initial state (its causal product has no decay); use attention.backend=torch")
            num, state = fast_causal_product(q, k, with_ones(v))
            numer, denom = num.split([num.shape[-1] - 1, 1], dim=-1)  # split: no zero-filled slice grads
            out = numer / (denom + eps)
        else:
            raise ValueError(f"unknown attention.backend {backend!r} "
                             "(expected 'torch', 'fast_transformers', 'fla' or 'auto')")
    return (out, state) if return_state else out


