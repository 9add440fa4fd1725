"""SineSPE filtering without materialising the codes: chunked GEMMs with a hand-written backward.

SineSPE codes are low rank in time. With the key basis Omega_k(n) = [cos(2 pi f n), sin(2 pi f n)]
and the query basis Omega_q(n) (the same with the query phase offsets), both codes share one
(2K, R) noise matrix W per feature d (gains and the (R d)^(-1/4) scale folded in):
Qbar[n, d] = Omega_q(n)[:, d] W[:, d],  Kbar[n, d] = Omega_k(n)[:, d] W[:, d]. Filtering is then

    qhat[n, :] = sum_{j, d} (q[n, d] Omega_q[n, j, d]) W[j, d, :]       (one GEMM per head)

and never needs the (L, H, d, R) code tensors (1 GB for queries and keys at 8192 tokens).

* **Chunks share one basis.** Write n = n0 + m with n0 a multiple of the chunk length C. Angle
  addition gives Omega(n0 + m) W = Omega(m) (Rot(2 pi f n0) W): every chunk uses the *same* local
  bases Omega_q(m), Omega_k(m), m < C, and its own rotated weights W_c (a (2K, d, R) block per
  chunk, shared by queries and keys). Only the activations are per position; the bases and their
  gradients are (H, 2, C, 2K, d), and the exact float64 phase reduction is needed only for n0.
* **Queries and keys in one product.** A chunk's rows [q ⊗ Omega_q ; k ⊗ Omega_k] multiply the
  same W_c: one GEMM of 2C rows per head, and one for the weight gradient.
* **Chunk-sized working sets.** A = x ⊗ Omega is built chunk by chunk in one reused buffer (the CPU
  allocator hands big blocks back to the OS, so a fresh 100 MB temporary per call costs more in
  page faults than its arithmetic) and rebuilt in the backward rather than stored.

* **On a GPU, all chunks in one GEMM** (:func:`sine_filter` ``batched``, default on CUDA): the per-chunk
  loop above is launch-bound there (~3 kernels per chunk forward, ~25 backward, per layer), so the chunks
  become a batch dimension instead: A = x ⊗ Omega for every chunk at once and one batched GEMM
  (H x n_chunks products of 2 B C rows) for queries and keys of a layer, one more for the gating term,
  and a handful of kernels in the backward. The price is A itself (2K times the size of x; split into
  groups of chunks past ``BATCHED_BYTES``); the CPU keeps the cache-friendly loop.

Gating adds a (d x R) block per layer, shared by queries and keys: xhat += x @ (sqrt(g) eps);
the sqrt(1-g) factor is applied to x by the caller. Everything runs in x's dtype (so bf16/fp16
autocast uses half-precision GEMMs on CUDA); gradients come back in each input's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SINE_CHUNK", "BATCHED_BYTES", "SineCodes", "rotate_chunks", "sine_filter"]

#: positions per chunk: large enough for efficient GEMMs (2C rows), small enough that the chunk
#: buffers (H x 2C x 2K x d floats: 10 MB for 4 heads of 64 features, K = 5) stay cache-friendly.
SINE_CHUNK = 512

#: batched (GPU) path: at most this many bytes of A = x ⊗ Omega per group of chunks (the backward holds ~4x)
BATCHED_BYTES = 1 << 30


@dataclass
class SineCodes:
    """Factorised SineSPE codes of one sequence (see the module docstring).

    omega: (H, 2, C, J, d) local bases [Omega_q(m), Omega_k(m)], m < C (J = 2K: cosines, sines).
    weights: (n_chunks, H, J, d, R) rotated noise of each chunk, shared by queries and keys.
    Qbar[n0 + m] = Omega_q(m) weights[n0 / C] and Kbar[n0 + m] = Omega_k(m) weights[n0 / C].
    """

    omega: Tensor
    weights: Tensor

    @property
    def chunk(self) -> int:
        return self.omega.shape[2]


def rotate_chunks(weight: Tensor, cos_b: Tensor, sin_b: Tensor) -> Tensor:
    """Per-chunk weights Rot(beta_c) W: weight (H, 2K, d, R), cos_b/sin_b (n_chunks, H, K, d).

    cos(a + b) = cos a cos b - sin a sin b and sin(a + b) = sin a cos b + cos a sin b, so the
    coefficients of the local [cos a, sin a] basis are [cos b Wc + sin b Ws, cos b Ws - sin b Wc].
    Returns (n_chunks, H, 2K, d, R).
    """
    k = cos_b.shape[2]
    wc, ws = weight[None, :, :k], weight[None, :, k:]  # (1, H, K, d, R)
    cb, sb = cos_b.unsqueeze(-1), sin_b.unsqueeze(-1)  # (n, H, K, d, 1)
    return torch.cat([cb * wc + sb * ws, cb * ws - sb * wc], dim=2)


def _prefix(buf: Tensor, *shape: int) -> Tensor:
    """A contiguous tensor of ``shape`` at the start of ``buf`` (for the shorter last chunk)."""
    return buf.view(-1)[: torch.Size(shape).numel()].view(shape)


def _batch_group(device: torch.device, chunk: int, batch: int) -> int:
    """Batch rows per product: on a CPU one row (a chunk's working set stays in cache); on a GPU
    as many as make ~8k positions (fewer, larger kernels: small products are launch-bound)."""
    return 1 if device.type == "cpu" else max(1, min(batch, 8192 // chunk))


def _chunks(length: int, chunk: int) -> list[tuple[int, int, int]]:
    return [(c, s, min(s + chunk, length)) for c, s in enumerate(range(0, length, chunk))]


class _SineFilter(torch.autograd.Function):
    """out (2, B, H, L, R): per chunk, [q ⊗ Omega_q ; k ⊗ Omega_k] @ W_c (+ [q ; k] @ G)."""

    @staticmethod
    def forward(ctx, x: Tensor, omega: Tensor, weights: Tensor, x_gate: Tensor | None, gate_w: Tensor | None,
                batched: bool):
        h, _, b, length, d = x.shape
        j, r = omega.shape[3], weights.shape[-1]
        dt = x.dtype
        ctx.dtypes = (omega.dtype, weights.dtype, None if gate_w is None else gate_w.dtype,
                      None if x_gate is None else x_gate.dtype)
        omega = omega.to(dt)
        weights = weights.to(dt).view(weights.shape[0], h, j * d, r)
        xs = x.contiguous()
        xg = None if x_gate is None else x_gate.to(dt).contiguous()
        gw = None if gate_w is None else gate_w.to(dt)
        out = x.new_empty(2, b, h, length, r)
        chunk = omega.shape[2]
        ctx.batched = batched
        if batched:
            _Batched.forward(xs, omega, weights, xg, gw, out)
            ctx.save_for_backward(xs, omega, weights, xg, gw)
            return out
        group = _batch_group(x.device, chunk, b)
        buf = x.new_empty(h, 2, group, chunk, j, d)
        for c, s, e in _chunks(length, chunk):
            n = e - s
            for i0 in range(0, b, group):
                m = min(b, i0 + group) - i0
                a = _prefix(buf, h, 2, m, n, j, d)
                torch.mul(xs[:, :, i0 : i0 + m, s:e].unsqueeze(4), omega[:, :, None, :n], out=a)
                y = torch.bmm(a.view(h, 2 * m * n, j * d), weights[c])  # (H, 2 m n, R)
                if xg is not None:
                    y.baddbmm_(xg[:, :, i0 : i0 + m, s:e].reshape(h, 2 * m * n, d), gw)
                out[:, i0 : i0 + m, :, s:e] = y.view(h, 2, m, n, r).permute(1, 2, 0, 3, 4)
        ctx.save_for_backward(xs, omega, weights, xg, gw)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor):
        xs, omega, weights, xg, gw = ctx.saved_tensors
        h, _, b, length, d = xs.shape
        j, r = omega.shape[3], weights.shape[-1]
        need_x, need_omega, need_w, need_xg, need_gw, _ = ctx.needs_input_grad
        g_all = d_out.to(xs.dtype)
        dx = torch.empty_like(xs) if need_x else None
        dxg = torch.empty_like(xg) if need_xg else None
        d_omega = torch.zeros_like(omega) if need_omega else None
        o_dt, w_dt, g_dt, xg_dt = ctx.dtypes
        if ctx.batched:
            d_w, d_gw = _Batched.backward(xs, omega, weights, xg, gw, g_all, dx, dxg, d_omega, need_w, need_gw)
            return (
                dx,
                None if d_omega is None else d_omega.to(o_dt),
                None if d_w is None else d_w.view(-1, h, j, d, r).to(w_dt),
                None if dxg is None else dxg.to(xg_dt),
                None if d_gw is None else d_gw.to(g_dt),
                None,
            )
        # weight gradient accumulated transposed, (n, H, R, J d): g^T A is faster than A^T g here
        d_wt = weights.new_zeros(weights.shape[0], h, r, j * d) if need_w else None
        d_gw = torch.zeros_like(gw) if need_gw else None
        w_t = weights.transpose(2, 3).contiguous() if (need_x or need_omega) else None  # (n, H, R, J d)
        chunk = omega.shape[2]
        group = _batch_group(xs.device, chunk, b)
        buf = xs.new_empty(h, 2, group, chunk, j, d)
        da_buf = xs.new_empty(h, 2, group, chunk, j, d)
        g_buf = xs.new_empty(h, 2, group, chunk, r)
        for c, s, e in _chunks(length, chunk):
            n = e - s
            om = omega[:, :, None, :n]  # (H, 2, 1, n, J, d)
            for i0 in range(0, b, group):
                m = min(b, i0 + group) - i0
                rows = 2 * m * n
                g = _prefix(g_buf, h, 2, m, n, r)
                g.copy_(g_all[:, i0 : i0 + m, :, s:e].permute(2, 0, 1, 3, 4))
                g2 = g.view(h, rows, r)
                xc = xs[:, :, i0 : i0 + m, s:e].unsqueeze(4)  # (H, 2, m, n, 1, d)
                if need_w:
                    a = _prefix(buf, h, 2, m, n, j, d)
                    torch.mul(xc, om, out=a)
                    d_wt[c].baddbmm_(g2.transpose(1, 2), a.view(h, rows, j * d))
                if xg is not None:
                    xgc = xg[:, :, i0 : i0 + m, s:e].reshape(h, rows, d)
                    if need_gw:
                        d_gw.baddbmm_(xgc.transpose(1, 2), g2)
                    if need_xg:
                        dxg[:, :, i0 : i0 + m, s:e] = torch.bmm(g2, gw.transpose(1, 2)).view(h, 2, m, n, d)
                if need_x or need_omega:
                    da = _prefix(da_buf, h, 2, m, n, j, d)
                    torch.bmm(g2, w_t[c], out=da.view(h, rows, j * d))
                    if need_x:  # sum_j dA[.., j, :] * Omega[.., j, :], without a (.., J, d) temporary
                        dxc = dx[:, :, i0 : i0 + m, s:e]
                        torch.mul(da[..., 0, :], om[..., 0, :], out=dxc)
                        for q in range(1, j):
                            dxc.addcmul_(da[..., q, :], om[..., q, :])
                    if need_omega:  # summed over the batch rows of the group
                        for i in range(m):
                            d_omega[:, :, :n].addcmul_(da[:, :, i], xc[:, :, i])
        return (
            dx,
            None if d_omega is None else d_omega.to(o_dt),
            None if d_wt is None else d_wt.transpose(2, 3).reshape(-1, h, j, d, r).to(w_dt),
            None if dxg is None else dxg.to(xg_dt),
            None if d_gw is None else d_gw.to(g_dt),
            None,
        )


class _Batched:
    """The GPU form of :class:`_SineFilter`: chunks as a batch dimension, a few large kernels per layer.

    Rows of a group of chunks [c0, c1) are laid out (H, chunk, [q ; k], B, C, .) so that one bmm over
    H x chunks multiplies every chunk's 2 B C rows by its own (J d x R) weights; the last chunk is zero-padded
    to C rows (padding rows produce zeros and receive no gradient: they are cut off before writing back).
    """

    @staticmethod
    def groups(xs: Tensor, omega: Tensor) -> list[tuple[int, int, int, int]]:
        """(c0, c1, s, e): chunk ranges whose A fits ``BATCHED_BYTES``, and the positions s:e they cover."""
        h, _, b, length, d = xs.shape
        chunk, j = omega.shape[2], omega.shape[3]
        n = -(-length // chunk)
        per_chunk = h * 2 * b * chunk * j * d * xs.element_size()
        step = max(1, BATCHED_BYTES // max(1, per_chunk))
        return [(c0, min(n, c0 + step), c0 * chunk, min(length, (c0 + step) * chunk)) for c0 in range(0, n, step)]

    @staticmethod
    def rows(x: Tensor, s: int, e: int, n_chunks: int, chunk: int) -> Tensor:
        """x (H, 2, B, L, .) positions s:e -> (H, n_chunks, 2, B, C, .), zero-padded to n_chunks * C."""
        h, two, b, _, f = x.shape
        part = x[:, :, :, s:e]
        pad = n_chunks * chunk - (e - s)
        if pad:
            part = torch.nn.functional.pad(part, (0, 0, 0, pad))
        return part.reshape(h, two, b, n_chunks, chunk, f).permute(0, 3, 1, 2, 4, 5).contiguous()

    @staticmethod
    def unrows(rows: Tensor, e_minus_s: int) -> Tensor:
        """(H, n_chunks, 2, B, C, f) -> (H, 2, B, e - s, f) (a view, padding cut off)."""
        h, n, two, b, c, f = rows.shape
        return rows.permute(0, 2, 3, 1, 4, 5).reshape(h, two, b, n * c, f)[:, :, :, :e_minus_s]

    @staticmethod
    def forward(xs: Tensor, omega: Tensor, weights: Tensor, xg: Tensor | None, gw: Tensor | None, out: Tensor) -> None:
        """Fill out (2, B, H, L, R); weights (n, H, J d, R) in x's dtype."""
        h, _, b, _, d = xs.shape
        chunk, j, r = omega.shape[2], omega.shape[3], weights.shape[-1]
        om = omega[:, None, :, None]  # (H, 1, 2, 1, C, J, d)
        for c0, c1, s, e in _Batched.groups(xs, omega):
            n = c1 - c0
            a = _Batched.rows(xs, s, e, n, chunk).unsqueeze(5) * om  # (H, n, 2, B, C, J, d)
            w = weights[c0:c1].transpose(0, 1).reshape(h * n, j * d, r)
            y = torch.bmm(a.view(h * n, 2 * b * chunk, j * d), w).view(h, n * 2 * b * chunk, r)
            del a
            if xg is not None:
                y.baddbmm_(_Batched.rows(xg, s, e, n, chunk).view(h, -1, d), gw)
            rows = _Batched.unrows(y.view(h, n, 2, b, chunk, r), e - s)  # (H, 2, B, e-s, R)
            out[:, :, :, s:e] = rows.permute(1, 2, 0, 3, 4)

    @staticmethod
    def backward(xs: Tensor, omega: Tensor, weights: Tensor, xg: Tensor | None, gw: Tensor | None, g_all: Tensor,
                 dx: Tensor | None, dxg: Tensor | None, d_omega: Tensor | None, need_w: bool, need_gw: bool,
                 ) -> tuple[Tensor | None, Tensor | None]:
        """Fill dx, dxg, d_omega (when given); return the weight gradient (n, H, J d, R) and the gate weights'."""
        h, _, b, _, d = xs.shape
        chunk, j, r = omega.shape[2], omega.shape[3], weights.shape[-1]
        om = omega[:, None, :, None]  # (H, 1, 2, 1, C, J, d)
        d_w = torch.empty_like(weights) if need_w else None
        d_gw = torch.zeros_like(gw) if need_gw else None
        g_t = g_all.permute(2, 0, 1, 3, 4)  # (H, 2, B, L, R) view
        for c0, c1, s, e in _Batched.groups(xs, omega):
            n = c1 - c0
            rows = h * n, 2 * b * chunk
            g = _Batched.rows(g_t, s, e, n, chunk).view(*rows, r)  # (H n, 2 B C, R)
            xc = _Batched.rows(xs, s, e, n, chunk).unsqueeze(5)  # (H, n, 2, B, C, 1, d)
            if need_w:
                a = (xc * om).view(*rows, j * d)
                d_w[c0:c1] = torch.bmm(a.transpose(1, 2), g).view(h, n, j * d, r).transpose(0, 1)
                del a
            if xg is not None and (need_gw or dxg is not None):
                g_h = g.view(h, -1, r)
                if need_gw:
                    d_gw.baddbmm_(_Batched.rows(xg, s, e, n, chunk).view(h, -1, d).transpose(1, 2), g_h)
                if dxg is not None:
                    dxg[:, :, :, s:e] = _Batched.unrows(torch.bmm(g_h, gw.transpose(1, 2)).view(h, n, 2, b, chunk, d),
                                                        e - s)
            if dx is not None or d_omega is not None:
                w_t = weights[c0:c1].transpose(0, 1).reshape(h * n, j * d, r).transpose(1, 2)
                da = torch.bmm(g, w_t).view(h, n, 2, b, chunk, j, d)
                if dx is not None:
                    dx[:, :, :, s:e] = _Batched.unrows((da * om).sum(5), e - s)
                if d_omega is not None:
                    d_omega += (da * xc).sum((1, 3))
        return d_w, d_gw


def _batched_default(device: torch.device) -> bool:
    """The chunks-as-batch form on CUDA (launch-bound loop there), the cache-friendly loop elsewhere."""
    return device.type == "cuda"


def sine_filter(
    x: Tensor, omega: Tensor, weights: Tensor, x_gate: Tensor | None = None, gate_weight: Tensor | None = None,
    batched: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Filter queries and keys with factorised SineSPE codes -> qhat, khat, each (B, H, L, R).

    x: (H, 2, B, L, d) queries and keys (already scaled by sqrt(1 - g) when gated);
    omega: (H, 2, C, J, d) local bases; weights: (n_chunks, H, J, d, R) (:func:`rotate_chunks`);
    x_gate (H, 2, B, L, d) and gate_weight (H, d, R) = sqrt(g) eps: the gating term, or None.
    ``batched``: all chunks in one batched GEMM (default on CUDA) or the chunk loop (default elsewhere);
    same maths, different summation order.
    """
    if (x_gate is None) != (gate_weight is None):
        raise ValueError("x_gate and gate_weight go together")
    if batched is None:
        batched = _batched_default(x.device)
    out = _SineFilter.apply(x, omega, weights, x_gate, gate_weight, bool(batched))
    return out[0], out[1]
