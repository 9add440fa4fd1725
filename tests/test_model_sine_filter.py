"""The chunked, factorised SineSPE filter (musicgen.model.ops.sine_filter) against the plain maths.

Sequences are cut into chunks of a few positions (the model uses 512) so that several chunks,
a short last chunk and the per-chunk rotations are all exercised.
"""

from __future__ import annotations

import pytest
import torch

from musicgen.model.ops.sine_filter import sine_filter
from musicgen.model.spe import SineSPE, SPEFilter

from reference_kernels import materialise_sine_codes

H, D, R, K = 2, 6, 5, 3


def _setup(gated: bool, length: int, batch: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    gen = SineSPE(H, D, R, K).double()
    with torch.no_grad():
        gen.freqs.copy_(torch.randn(H, D, K))  # frequencies up to ~0.4 cycles per position
    filt = SPEFilter(H, D, R, gated=gated).double()
    g = torch.Generator().manual_seed(seed)
    noise = gen.draw(g, torch.device("cpu")).double()
    eps = filt.draw(g, torch.device("cpu"))
    eps = None if eps is None else eps.double()
    q = torch.randn(batch, length, H, D, dtype=torch.float64, requires_grad=True)
    k = torch.randn(batch, length, H, D, dtype=torch.float64, requires_grad=True)
    return gen, filt, noise, eps, q, k


def test_sine_codes_parity_with_direct_basis() -> None:
    """Chunk-local basis + rotated weights give the codes of the direct float64 basis at every n."""
    gen, _, noise, _, _, _ = _setup(False, 37)
    length = 37
    qbar, kbar = materialise_sine_codes(gen.codes(noise, length, chunk=8), length)
    qref, kref = gen.codes_at(noise, torch.arange(length))
    assert torch.allclose(qbar, qref, atol=1e-10) and torch.allclose(kbar, kref, atol=1e-10)


@pytest.mark.parametrize("gated", [True, False])
def test_sine_filter_parity_values_and_gradients(gated: bool) -> None:
    """Factorised chunked filtering == filtering with materialised (L, H, d, R) codes: values and
    gradients for q, k and every SPE parameter (frequencies, offsets, gains, gate), float64."""
    length = 37
    results = []
    for factorised in (True, False):
        gen, filt, noise, eps, q, k = _setup(gated, length)
        codes = gen.codes(noise, length, chunk=8)
        if not factorised:
            codes = gen.codes_at(noise, torch.arange(length))
        qhat, khat = filt(q, k, codes, eps)
        w = torch.randn_like(qhat, generator=torch.Generator().manual_seed(1))
        loss = (qhat * w).sum() + (khat * w.flip(-1)).square().sum()
        loss.backward()
        params = dict(gen.named_parameters()) | dict(filt.named_parameters())
        results.append((qhat.detach(), khat.detach(), q.grad, k.grad, {n: p.grad for n, p in params.items()}))
    (qa, ka, dqa, dka, pa), (qb, kb, dqb, dkb, pb) = results
    for a, b in [(qa, qb), (ka, kb), (dqa, dqb), (dka, dkb)]:
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)
    assert pa.keys() == pb.keys() and len(pa) == (4 if gated else 3)
    for name in pa:
        assert pa[name] is not None and torch.allclose(pa[name], pb[name], rtol=1e-8, atol=1e-10), name


@pytest.mark.parametrize("group, batched, budget", [(1, False, 0), (2, False, 0), (1, True, 1 << 30), (1, True, 1)])
def test_sine_filter_parity_gradcheck(group: int, batched: bool, budget: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-written backward against finite differences, every input, gating term included.
    group=2 runs the GPU layout (several batch rows per product, here with a short last group); batched=True the
    CUDA form (all chunks as one batched GEMM; budget=1 forces one chunk per group, the memory-bounded split),
    which must also equal the chunk loop."""
    monkeypatch.setattr("musicgen.model.ops.sine_filter._batch_group", lambda device, chunk, batch: min(batch, group))
    if batched:
        monkeypatch.setattr("musicgen.model.ops.sine_filter.BATCHED_BYTES", budget)
    torch.manual_seed(0)
    h, b, length, j, d, r, chunk = 2, 3, 7, 4, 3, 2, 3
    dt = torch.float64
    x = torch.randn(h, 2, b, length, d, dtype=dt, requires_grad=True)
    omega = torch.randn(h, 2, chunk, j, d, dtype=dt, requires_grad=True)
    weights = torch.randn(3, h, j, d, r, dtype=dt, requires_grad=True)
    xg = torch.randn(h, 2, b, length, d, dtype=dt, requires_grad=True)
    gw = torch.randn(h, d, r, dtype=dt, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch.cat(sine_filter(*a, batched=batched)), (x, omega, weights, xg, gw))
    assert torch.autograd.gradcheck(lambda *a: torch.cat(sine_filter(*a, batched=batched)), (x, omega, weights))
    if batched:
        loop = torch.cat(sine_filter(x, omega, weights, xg, gw, batched=False))
        assert torch.allclose(torch.cat(sine_filter(x, omega, weights, xg, gw, batched=True)), loop,
                              rtol=1e-12, atol=1e-12)


def test_sine_filter_keeps_half_precision_inputs() -> None:
    """Under autocast the activations arrive in bf16: outputs follow x, gradients follow each input."""
    gen, filt, noise, eps, q, k = _setup(True, 20)
    gen.float(), filt.float()
    codes = gen.codes(noise.float(), 20, chunk=8)
    qb = q.detach().to(torch.bfloat16).requires_grad_()
    qhat, khat = filt(qb, qb, codes, eps.float())
    assert qhat.dtype == torch.bfloat16
    (qhat.float().sum() + khat.float().sum()).backward()
    assert qb.grad.dtype == torch.bfloat16 and gen.freqs.grad.dtype == torch.float32
