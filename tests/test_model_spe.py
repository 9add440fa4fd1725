"""Statistical properties of the SPE codes (gate closed): stationarity and 1/sqrt(R) spread."""

from __future__ import annotations

import math

import pytest
import torch

from musicgen.model.spe import ConvSPE, SineSPE, SPEFilter

H, D = 1, 4
L = 48


def _make(kind: str, realizations: int) -> torch.nn.Module:
    torch.manual_seed(0)  # same parameters whatever R
    if kind == "sine":
        gen = SineSPE(H, D, realizations, sines=3)
        with torch.no_grad():
            gen.freqs.copy_(torch.randn(H, D, 3) - 1.5)  # visible periods within L
    else:
        gen = ConvSPE(H, D, realizations, kernel_size=12)
    return gen


def _filtered(kind: str, realizations: int, seed: int, length: int = L) -> tuple[torch.Tensor, torch.Tensor]:
    """qhat, khat (D, length, R) for one-hot queries/keys through a closed-gate SPEFilter,
    i.e. the codes Qbar[:, d], Kbar[:, d] of every feature d, rescaled by (R d)^(1/4)."""
    gen = _make(kind, realizations)
    filt = SPEFilter(H, D, realizations, gated=True)
    with torch.no_grad():
        filt.gate.fill_(-40.0)  # g = sigmoid(-40) ~ 4e-18: gate closed
        g = torch.Generator().manual_seed(seed)
        noise = gen.draw(g, torch.device("cpu"))
        # sine codes in chunks of 16 positions: lags cross chunk boundaries (rotated weights)
        codes = gen.codes(noise, length, chunk=16) if kind == "sine" else gen.codes(noise, length)
        eye = torch.eye(D).view(D, 1, 1, D).expand(D, length, H, D)  # batch = feature index
        qhat, khat = filt(eye, eye, codes, filt.draw(g, torch.device("cpu")))  # (D, H, length, R)
    scale = (realizations * D) ** 0.25
    return qhat[:, 0] * scale, khat[:, 0] * scale


def _products(qhat: torch.Tensor, khat: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per-realisation products Qbar[n, d, r] Kbar[m, d, r]: (D, R)."""
    return qhat[:, n] * khat[:, m]


@pytest.mark.parametrize("kind", ["sine", "conv"])
def test_spe_stationary_mean_depends_only_on_lag(kind: str) -> None:
    realizations = 8192
    qhat, khat = _filtered(kind, realizations, seed=0)

    def est(n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Monte-Carlo estimate of P_d(n, m) (mean over realisations) and its standard error."""
        prod = _products(qhat, khat, n, m)
        return prod.mean(-1), prod.std(-1) / math.sqrt(realizations)

    for lag in (0, 1, 3, 7, 15, -2, -9):
        n1, n2 = 20, 37  # same lag, different absolute positions
        (a, sa), (b, sb) = est(n1, n1 - lag), est(n2, n2 - lag)
        tol = 5 * torch.sqrt(sa**2 + sb**2) + 1e-6
        assert torch.all((a - b).abs() < tol), (lag, a, b, tol)
    # and the kernel is not trivially flat: different lags give different values
    (a, sa), (b, sb) = est(30, 30), est(30, 15)
    assert (a - b).abs().max() > 10 * sb.max()
    if kind == "sine":  # closed form: sum_k gain_k^2 cos(2 pi f_k lag + phi_k) / (2K)
        gen = _make(kind, realizations)
        with torch.no_grad():
            f = torch.sigmoid(gen.freqs[0]) / 2
            gains = torch.nn.functional.softplus(gen.gains[0])
            for lag in (0, 5, 11):
                exact = (gains**2 * torch.cos(2 * math.pi * f * lag + gen.offsets[0])).sum(-1) / 6
                m, s = est(30, 30 - lag)
                assert torch.all((m - exact).abs() < 5 * s + 1e-6), (lag, m, exact)


@pytest.mark.parametrize("kind", ["sine", "conv"])
def test_spe_stationary_spread_shrinks_like_inv_sqrt_r(kind: str) -> None:
    """Std over independent draws of the realisation average: quadrupling R halves it."""

    pairs = [(n, m) for n in (12, 20, 27) for m in range(0, n + 1, 2)]

    def spread(realizations: int) -> float:
        ests = []
        for seed in range(40):
            qhat, khat = _filtered(kind, realizations, seed=seed, length=28)
            ests.append(torch.stack([_products(qhat, khat, n, m).mean(-1) for n, m in pairs]))
        return torch.stack(ests).std(0).mean().item()

    ratio = spread(256) / spread(64)
    assert 0.4 < ratio < 0.6, ratio


def test_gate_open_removes_position_dependence() -> None:
    """g -> 1: codes are the position-independent eps, so qhat·khat no longer depends on n - m."""
    gen = _make("sine", 64)
    filt = SPEFilter(H, D, 64, gated=True)
    with torch.no_grad():
        filt.gate.fill_(40.0)
        g = torch.Generator().manual_seed(0)
        codes = gen.codes(gen.draw(g, torch.device("cpu")), L)
        q = torch.randn(1, 1, H, D).expand(1, L, H, D)
        qhat, khat = filt(q, q, codes, filt.draw(g, torch.device("cpu")))
    assert torch.allclose(qhat[0, :, 0], qhat[0, :, -1], atol=1e-6)


def test_spe_parameters_receive_gradients() -> None:
    from musicgen.model import build_model

    for kind in ("spe_sine", "spe_conv"):
        model = build_model({"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16,
                             "pe": {"kind": kind, "realizations": 8, "kernel_size": 8}}, 20)
        model(torch.randint(1, 20, (2, 24))).logsumexp(-1).mean().backward()
        names = [n for n, p in model.named_parameters() if "code_generators" in n or "spe.gate" in n]
        assert names
        for n, p in model.named_parameters():
            if n in names:
                assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_conv_spe_fft_path_parity_with_direct_conv() -> None:
    """Long kernels use FFTs; they must give the same codes as the direct depthwise conv."""
    gen = ConvSPE(2, 4, 8, kernel_size=40)
    x = torch.randn(8, 8, 40 + 57 - 1)
    with torch.no_grad():
        direct = gen._filter_direct(x, 57)
        fft = gen._filter_fft(x, 57)
    for a, b in zip(direct, fft):
        assert torch.allclose(a, b, atol=1e-5)
