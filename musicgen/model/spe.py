"""Stochastic Positional Encoding (Liutkus et al., ICML 2021, arXiv 2105.08399).

SPE makes linear attention *relative*: for every head and key feature d it draws R realisations
of two jointly stationary random processes Qbar_d(n), Kbar_d(m) whose cross-covariance is a
learnable positional kernel P_d(n - m). Filtering queries and keys with them,

    qhat[n, r] = sum_d q[n, d] Qbar[n, d, r],   khat[m, r] = sum_d k[m, d] Kbar[m, d, r],

gives E[qhat·khat] ∝ sum_d q_d k_d P_d(n - m): a relative-position attention kernel that never
forms the (L x L) matrix. Two code generators:

* :class:`SineSPE` — P_d is a sum of K cosines with learnable frequencies, phases and gains.
  Codes at any position come from K sines, so generation has no maximum length.
* :class:`ConvSPE` — Qbar, Kbar are white noise filtered by two learnable kernels of length
  ``kernel_size``; generation keeps a ring buffer of the last ``kernel_size`` noise samples.

Codes are shared across the batch (one draw per forward) and, with ``pe.share``, across layers:
one generator for the whole model, one :class:`SPEFilter` (gate) per layer.
Layouts: ConvSPE codes (L, H, d, R); SineSPE codes stay factorised (:class:`SineCodes`: local
query/key bases (H, 2, C, 2K, d) for one chunk of C positions and rotated noise (n_chunks, H, 2K, d, R)
per chunk) and are applied by :func:`.ops.sine_filter.sine_filter` without ever forming the (L, H, d, R)
tensors; queries/keys (B, L, H, d); filtered (B, H, L, R).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PEConfig
from .noise import NoiseStream, derive_seed, randn
from .ops.sine_filter import SINE_CHUNK, SineCodes, rotate_chunks, sine_filter

__all__ = ["SineSPE", "ConvSPE", "SPEFilter", "ConvNoise", "SineStepPlan", "build_code_generator"]


class SineSPE(nn.Module):
    """Sinusoidal SPE code generator.

    Per head and feature d: frequencies f = sigmoid(theta)/2 in [0, 1/2] (initialised low for
    long-range kernels), query phase offsets phi, gains softplus(lambda) >= 0. With white noise
    z ~ N(0, 1/(2K)) of shape (H, d, 2K, R) scaled by the gains,

        Qbar[n] = Omega_q(n) z,  Omega_q(n) = [cos(2 pi f n + phi), sin(2 pi f n + phi)]
        Kbar[m] = Omega_k(m) z,  Omega_k(m) = [cos(2 pi f m),       sin(2 pi f m)]

    so that E[Qbar[n]·Kbar[m]] = sum_k gain_k^2 cos(2 pi f_k (n - m) + phi_k) / (2K): stationary.
    (The query offset enters both the cosine and the sine; otherwise the covariance would
    depend on n and m separately.) Both codes are scaled by (R d)^(-1/4).
    """

    #: every parameter of this module is positional (MusicTransformer.positional_parameter_names)
    holds_positional_parameters = True

    def __init__(self, n_heads: int, head_dim: int, realizations: int, sines: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.realizations, self.sines = realizations, sines
        self.freqs = nn.Parameter(torch.randn(n_heads, head_dim, sines) - 4.0)
        self.offsets = nn.Parameter(torch.randn(n_heads, head_dim, sines))
        self.gains = nn.Parameter(torch.randn(n_heads, head_dim, sines))

    @property
    def scale(self) -> float:
        return (self.realizations * self.head_dim) ** -0.25

    def draw(self, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """White noise z of shape (H, d, 2K, R), one per sequence (shared by the batch)."""
        shape = (self.n_heads, self.head_dim, 2 * self.sines, self.realizations)
        return randn(shape, generator, device) / math.sqrt(2 * self.sines)

    #: codes at one position have a lean form (:meth:`step_plan`)
    has_lean_step = True

    def _mixing(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Two (H, d, 2K, R) matrices Mq, Mk with Qbar(n) = Omega_k(n) Mq, Kbar(n) = Omega_k(n) Mk.

        cos(a + phi) = cos a cos phi - sin a sin phi (and likewise for sin), so the query code
        is the key basis times a phase-rotated noise: one set of sines serves both codes.
        """
        gains = F.softplus(self.gains).unsqueeze(-1)  # (H, d, K, 1)
        zc = z[:, :, 0::2] * gains  # cosine coefficients (H, d, K, R)
        zs = z[:, :, 1::2] * gains
        c, s = torch.cos(self.offsets).unsqueeze(-1), torch.sin(self.offsets).unsqueeze(-1)
        mq = torch.cat([c * zc + s * zs, c * zs - s * zc], dim=2) * self.scale
        mk = torch.cat([zc, zs], dim=2) * self.scale
        return mq, mk

    def _phase(self, positions: Tensor) -> Tensor:
        """2 pi (f n mod 1) at integer positions (L,) -> (H, L, K, d).

        f * n is formed in float64 and reduced mod 1 before the float32 trigonometry: at
        position 10^5 a float32 phase would be off by ~0.05 rad for the highest frequencies,
        and generation has no maximum length.
        """
        freqs = (torch.sigmoid(self.freqs) / 2).transpose(1, 2)  # (H, K, d)
        hi = torch.float32 if positions.device.type == "mps" else torch.float64  # MPS has no float64
        cycles = freqs.to(hi).unsqueeze(1) * positions.to(hi).view(1, -1, 1, 1)  # (H, L, K, d)
        return (2 * math.pi) * (cycles - cycles.detach().floor()).to(freqs.dtype)

    def basis(self, positions: Tensor) -> Tensor:
        """Omega_k at integer positions (L,) -> (H, L, 2K, d): [cos(2 pi f n), sin(2 pi f n)]."""
        phase = self._phase(positions)
        return torch.cat([torch.cos(phase), torch.sin(phase)], dim=2)

    def codes_at(self, noise: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Materialised codes for positions (L,) -> two (L, H, d, R) tensors (recurrent step)."""
        omega = self.basis(positions)  # (H, L, 2K, d)
        mq, mk = self._mixing(noise)  # (H, d, 2K, R)
        return torch.einsum("hljd,hdjr->lhdr", omega, mq), torch.einsum("hljd,hdjr->lhdr", omega, mk)

    # uniform interface used by the model -------------------------------------------------
    #: codes can start at any position (:meth:`codes` ``start``): a prompt can be prefilled in chunks
    continues_codes = True

    def codes(self, noise: Tensor, length: int, chunk: int | None = None, start: int = 0) -> SineCodes:
        """Codes for positions start..start+L-1 in factorised, chunked form (:mod:`.sine_filter`): local
        query/key bases for one chunk and rotated noise per chunk; never (L, H, d, R) tensors."""
        device = self.freqs.device
        chunk = max(1, min(SINE_CHUNK if chunk is None else chunk, length))
        local = self._phase(torch.arange(chunk, device=device))  # (H, C, K, d)
        local_q = local + self.offsets.transpose(1, 2).unsqueeze(1)
        omega = torch.stack(
            [torch.cat([torch.cos(local_q), torch.sin(local_q)], dim=2),
             torch.cat([torch.cos(local), torch.sin(local)], dim=2)],
            dim=1,
        )  # (H, 2, C, 2K, d)
        offsets = self._phase(torch.arange(start, start + length, chunk, device=device)).transpose(0, 1)  # (n, H, K, d)
        _, mk = self._mixing(noise)  # (H, d, 2K, R): the key mixing is the plain (scaled) noise
        weights = rotate_chunks(mk.transpose(1, 2), torch.cos(offsets), torch.sin(offsets))
        return SineCodes(omega, weights)

    def begin(self, noise: Tensor) -> Tensor:
        """Recurrent state: just the noise; codes at n are recomputed from the sines."""
        return noise

    def step(self, state: Tensor, position: int) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """Codes at one position: O(H d K R) work, whatever the position."""
        return self.codes_at(state, torch.tensor([position], device=self.freqs.device)), state

    @torch.no_grad()
    def step_plan(self, noise: Tensor, gate_eps: list[Tensor | None]) -> "SineStepPlan":
        """Lean codes for one generated batch, for the layers using this generator (their gating noise
        ``gate_eps``, None when ungated; in layer order): the (H d, 2K, 2R) mixing [Mq | Mk] of the
        sequence's noise, computed once, and one (layers, 2, H, d or 2d, R) buffer of per-layer filter
        matrices: rows [:d] get the codes [Qbar(n), Kbar(n)] every position (one copy for all the layers),
        rows [d:] hold the layer's gating noise eps (constant)."""
        device = self.freqs.device
        h, d, k, r = self.n_heads, self.head_dim, self.sines, self.realizations
        hi = torch.float32 if device.type == "mps" else torch.float64
        mq, mk = self._mixing(noise)  # (H, d, 2K, R) each
        gated = gate_eps[0] is not None
        buf = torch.zeros(len(gate_eps), 2, h, 2 * d if gated else d, r, device=device)
        if gated:
            for j, eps in enumerate(gate_eps):
                buf[j, :, :, d:] = eps.to(buf.dtype)  # (H, d, R)
        return SineStepPlan(
            freqs=(torch.sigmoid(self.freqs) / 2).to(hi),
            omega=torch.empty(h * d, 1, 2 * k, device=device),
            mixing=torch.cat([mq, mk], dim=-1).reshape(h * d, 2 * k, 2 * r).contiguous(),
            filters=buf,
        )


@dataclass
class SineStepPlan:
    """SineSPE codes of one generated batch, one position at a time (:meth:`SineSPE.step_plan`).

    Per position the codes Qbar(n) = Omega(n) Mq, Kbar(n) = Omega(n) Mk are one bmm (float64 phase
    reduced mod 1, exactly like :meth:`SineSPE.codes_at`), copied once into the filter matrices of every
    layer using this generator (:meth:`layer_filter` views, read by :meth:`SPEFilter.step_plan`).
    """

    freqs: Tensor  # (H, d, K) frequencies, float64 (float32 on MPS)
    omega: Tensor  # (H d, 1, 2K) buffer [cos, sin] of the position
    mixing: Tensor  # (H d, 2K, 2R) [Mq | Mk]
    filters: Tensor  # (layers, 2, H, d or 2d, R)

    def layer_filter(self, j: int) -> Tensor:
        """The (2H, d or 2d, R) filter matrices of the j-th layer using this generator (a view)."""
        _, _, h, _, r = self.filters.shape
        return self.filters[j].view(2 * h, -1, r)

    def advance(self, position: int | Tensor) -> None:
        """Write the codes at ``position`` into every layer's filter matrices. ``position``: an int, or a
        float64 0-d tensor on the device (the CUDA-graph step, :mod:`..graphs`): the same float64 product."""
        k = self.freqs.shape[-1]
        phase = torch.frac(self.freqs * position).to(torch.float32).mul_(2 * math.pi).view(-1, 1, k)
        torch.cos(phase, out=self.omega[..., :k])
        torch.sin(phase, out=self.omega[..., k:])
        codes = torch.bmm(self.omega, self.mixing)  # (H d, 1, 2R): [Qbar(n) | Kbar(n)]
        _, _, h, _, r = self.filters.shape
        d = codes.shape[0] // h
        self.filters[:, :, :, :d].copy_(codes.view(h, d, 2, r).permute(2, 0, 1, 3))


@dataclass
class ConvNoise:
    """ConvSPE's per-sequence randomness: a noise stream, plus the ring buffer used by ``step``.

    ``ring`` (H*d, R, K) holds noise samples z[t - K + 1 .. t]; sample z[t] sits in slot t mod K
    (last axis), a layout that makes the per-step filtering one bmm with no copy.
    """

    stream: NoiseStream
    ring: Tensor | None = None

    def nbytes(self) -> int:
        ring = 0 if self.ring is None else self.ring.numel() * self.ring.element_size()
        return ring + self.stream.nbytes()


class ConvSPE(nn.Module):
    """Convolutive SPE code generator.

    White noise z[t] (R, H*d) — shared by queries and keys — is filtered by two learnable
    depthwise kernels of length K (one per head and feature): Qbar[n] = sum_j wq[j] z[n-K+1+j],
    Kbar[m] = sum_j wk[j] z[m-K+1+j]. The noise starts K-1 samples before position 0, so
    every position sees a full window (no border effect) and the cross-covariance,
    sum_j wq[j] wk[j + n - m], depends only on n - m.
    """

    #: every parameter of this module is positional (MusicTransformer.positional_parameter_names)
    holds_positional_parameters = True

    def __init__(self, n_heads: int, head_dim: int, realizations: int, kernel_size: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.realizations, self.kernel_size = realizations, kernel_size
        channels = n_heads * head_dim
        init_scale = math.sqrt(kernel_size / 2)
        self.weight_q = nn.Parameter(torch.rand(channels, kernel_size) / init_scale)
        self.weight_k = nn.Parameter(torch.rand(channels, kernel_size) / init_scale)

    @property
    def scale(self) -> float:
        return (self.realizations * self.head_dim) ** -0.25

    def draw(self, generator: torch.Generator | None, device: torch.device) -> ConvNoise:
        seed = derive_seed(generator)
        shape = (self.realizations, self.n_heads * self.head_dim)
        return ConvNoise(NoiseStream(seed, shape, device))

    def _to_codes(self, x: Tensor) -> Tensor:
        """(R, H*d, L) -> (L, H, d, R), scaled."""
        r, _, length = x.shape
        return (x.permute(2, 1, 0) * self.scale).reshape(length, self.n_heads, self.head_dim, r)

    def codes(self, noise: ConvNoise, length: int) -> tuple[Tensor, Tensor]:
        """Consume K-1+L noise samples and return codes for positions 0..L-1."""
        k = self.kernel_size
        z = noise.stream.take(length + k - 1)  # (T, R, C)
        noise.ring = self._ring_from(z, length)
        x = z.permute(1, 2, 0)  # (R, C, T)
        if k >= self.fft_threshold:
            yq, yk = self._filter_fft(x, length)
        else:
            yq, yk = self._filter_direct(x, length)
        return self._to_codes(yq), self._to_codes(yk)

    #: kernels at least this long are applied with FFTs: O(T log T) instead of O(T K) per channel
    fft_threshold: int = 32

    def _filter_direct(self, x: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Depthwise valid cross-correlation with conv1d; both kernels in one call."""
        channels, k = x.shape[1], self.kernel_size
        w = torch.stack([self.weight_q, self.weight_k], dim=1).view(2 * channels, 1, k)
        y = F.conv1d(x, w.to(x.dtype), groups=channels)  # (R, 2C, L), interleaved q/k
        y = y.view(y.shape[0], channels, 2, length)
        return y[:, :, 0], y[:, :, 1]

    def _filter_fft(self, x: Tensor, length: int) -> tuple[Tensor, Tensor]:
        """Same cross-correlation via real FFTs (float32, autocast off: no half-precision FFT on CPU).

        out[i] = sum_j w[j] x[i + j] = irfft(rfft(x) * conj(rfft(w)))[i]; with n >= T there is no
        wrap-around for the kept outputs i < L.
        """
        t = x.shape[-1]
        n = 1 << (t - 1).bit_length()
        with torch.autocast(device_type=x.device.type, enabled=False):
            xf = torch.fft.rfft(x.float(), n=n)  # (R, C, n/2+1)
            w = torch.stack([self.weight_q, self.weight_k]).float()  # (2, C, K)
            wf = torch.fft.rfft(w, n=n).conj()
            yq = torch.fft.irfft(xf * wf[0], n=n)[..., :length]
            yk = torch.fft.irfft(xf * wf[1], n=n)[..., :length]
        return yq, yk

    def _ring_from(self, z: Tensor, length: int) -> Tensor:
        """Ring buffer after a parallel pass: samples z[length-K+1 .. length-1] at slot t mod K."""
        k = self.kernel_size
        ring = z.new_zeros((z.shape[2], z.shape[1], k))  # (C, R, K)
        if k > 1:
            times = torch.arange(length - k + 1, length, device=z.device)
            ring[:, :, times % k] = z[-(k - 1) :].permute(2, 1, 0)
        return ring

    #: no lean step: the generic step's ring buffer and bmm are already cheap next to the rest
    has_lean_step = False

    def begin(self, noise: ConvNoise) -> ConvNoise:
        """Prepare the ring buffer for stepping (a ``codes`` call for a prompt already did)."""
        if noise.ring is None:
            z = noise.stream.take(self.kernel_size - 1)  # z[-(K-1) .. -1]
            noise.ring = self._ring_from(torch.cat([z.new_zeros((1, *z.shape[1:])), z]), 0)
        return noise

    def step(self, noise: ConvNoise, position: int) -> tuple[tuple[Tensor, Tensor], ConvNoise]:
        """Codes for ``position`` from the last K noise samples: O(K R H d), no max length."""
        k = self.kernel_size
        ring = noise.ring
        assert ring is not None
        # in place: the ring is per-sequence state, copying it every step would cost O(K R H d) bytes
        ring[:, :, position % k] = noise.stream.take(1)[0].T
        # slot s holds z[position - K + 1 + j] with j = (s - position - 1) mod K
        w = torch.stack([self.weight_q, self.weight_k], dim=-1)  # (C, K, 2)
        w = torch.roll(w, (position + 1) % k, dims=1).to(ring.dtype)
        y = torch.bmm(ring, w)  # (C, R, 2)
        qbar = y[..., 0].T.unsqueeze(-1)  # (R, C, 1)
        kbar = y[..., 1].T.unsqueeze(-1)
        return (self._to_codes(qbar), self._to_codes(kbar)), noise


class SPEFilter(nn.Module):
    """Per-layer application of shared SPE codes, with optional gating.

    Gating (``gated``) mixes in position-independent noise eps, shared by queries and keys:
    Qbar <- sqrt(1-g) Qbar + sqrt(g) eps (same for Kbar), g = sigmoid(gate) per (head, feature),
    so each feature learns how positional it is. Because the mix is linear and per feature,
    it is applied to q and k instead of the (large, shared) codes:
    qhat = (sqrt(1-g) q)·Qbar + (sqrt(g) q)·eps.
    """

    #: every parameter of this module is positional (MusicTransformer.positional_parameter_names)
    holds_positional_parameters = True

    def __init__(self, n_heads: int, head_dim: int, realizations: int, gated: bool) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.realizations = n_heads, head_dim, realizations
        self.gated = gated
        if gated:
            self.gate = nn.Parameter(torch.randn(n_heads, head_dim))

    def draw(self, generator: torch.Generator | None, device: torch.device) -> Tensor | None:
        """Gating noise eps (H, d, R) for one sequence, scaled like the codes."""
        if not self.gated:
            return None
        shape = (self.n_heads, self.head_dim, self.realizations)
        return randn(shape, generator, device) * (self.realizations * self.head_dim) ** -0.25

    @staticmethod
    def _filter(x: Tensor, code: Tensor) -> Tensor:
        """sum_d x[b, l, h, d] code[l, h, d, r] -> (B, H, L, R).

        Written as one bmm batched over (l, h) — (B x d) @ (d x R) — because the codes are R/B
        times larger than the activations: the cost is reading them, and einsum's generic
        path adds extra permute-copies of the codes (measured ~2x slower on CPU).
        """
        b, length, h, d = x.shape
        xp = x.permute(1, 2, 0, 3).reshape(length * h, b, d)
        out = torch.bmm(xp, code.to(x.dtype).reshape(length * h, d, code.shape[-1]))
        return out.view(length, h, b, -1).permute(2, 1, 0, 3).contiguous()

    def forward(
        self, q: Tensor, k: Tensor, codes: SineCodes | tuple[Tensor, Tensor], eps: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """q, k: (B, L, H, d); codes: factorised SineSPE codes, or (L, H, d, R) Qbar, Kbar
        -> qhat, khat: (B, H, L, R)."""
        if isinstance(codes, SineCodes):
            return self._forward_factorised(q, k, codes, eps)
        qbar, kbar = codes
        if not self.gated:
            return self._filter(q, qbar), self._filter(k, kbar)
        assert eps is not None
        keep = torch.sigmoid(-self.gate).sqrt()  # sqrt(1 - g)
        mix = torch.sigmoid(self.gate).sqrt()  # sqrt(g)
        eps = eps.to(q.dtype)
        qhat = self._filter(q * keep, qbar) + torch.einsum("blhd,hdr->bhlr", q * mix, eps)
        khat = self._filter(k * keep, kbar) + torch.einsum("blhd,hdr->bhlr", k * mix, eps)
        return qhat, khat

    def _forward_factorised(
        self, q: Tensor, k: Tensor, codes: SineCodes, eps: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """SineSPE: queries and keys in one chunked kernel; sqrt(1-g) scales them (as in the
        generic path) and the gating term x·(sqrt(g) eps) is one extra (d x R) product."""
        x = torch.stack([q, k]).permute(3, 0, 1, 2, 4).contiguous()  # (H, 2, B, L, d)
        if not self.gated:
            return sine_filter(x, codes.omega, codes.weights)
        assert eps is not None
        keep = torch.sigmoid(-self.gate).sqrt().to(x.dtype)  # (H, d); x keeps its (autocast) dtype
        gate_w = torch.sigmoid(self.gate).sqrt().unsqueeze(-1) * eps  # (H, d, R)
        return sine_filter(x * keep.view(-1, 1, 1, 1, self.head_dim), codes.omega, codes.weights, x, gate_w)

    @torch.no_grad()
    def step_plan(self, filters: Tensor) -> Callable[[Tensor], Tensor]:
        """The lean filter of one generated batch: [q, k] (B, 2, H, d) -> [qhat ; khat] (2H, B, R), one
        multiply and one bmm for queries and keys together against ``filters`` (2H, d or 2d, R) (from the
        code generator's plan, refreshed every position). Gated: q -> [q sqrt(1-g), q sqrt(g)] against
        [Qbar(n) ; eps]."""
        mul = None
        if self.gated:
            mul = torch.stack([torch.sigmoid(-self.gate).sqrt(), torch.sigmoid(self.gate).sqrt()], 1)  # (H, 2, d)
        return _LeanFilter(filters, mul)


@dataclass
class _LeanFilter:
    filters: Tensor
    mul: Tensor | None

    def __call__(self, qk: Tensor) -> Tensor:
        b, _, h, _ = qk.shape
        u = qk.unsqueeze(-2) * self.mul if self.mul is not None else qk  # (B, 2, H, 2, d)
        return torch.bmm(u.reshape(b, 2 * h, -1).transpose(0, 1), self.filters)  # (2H, B, R)


def build_code_generator(pe: PEConfig, n_heads: int, head_dim: int) -> nn.Module:
    kind = pe.kind
    if kind == "spe_sine":
        return SineSPE(n_heads, head_dim, pe.realizations, pe.sines)
    if kind == "spe_conv":
        return ConvSPE(n_heads, head_dim, pe.realizations, pe.kernel_size)
    raise ValueError(f"pe.kind {kind!r} has no SPE code generator")
