"""Chunked causal linear-attention kernel vs the quadratic masked reference (float64)."""

from __future__ import annotations

import pytest
import torch

from musicgen.model.ops.linear_attention import causal_linear_attention, linear_attention_step

from reference_kernels import causal_linear_attention_naive


def _inputs(b=2, h=3, length=37, f=5, d=4, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.rand(b, h, length, f, generator=g, dtype=dtype).requires_grad_()
    k = torch.rand(b, h, length, f, generator=g, dtype=dtype).requires_grad_()
    v = torch.randn(b, h, length, d, generator=g, dtype=dtype).requires_grad_()
    return q, k, v


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("length,chunk", [(37, 8), (64, 16), (5, 16), (50, 1), (33, 33)])
def test_chunked_kernel_parity_values_and_grads(length: int, chunk: int) -> None:
    """Includes L not divisible by the chunk size, a single partial chunk and chunk size 1."""
    q, k, v = _inputs(length=length)
    out = causal_linear_attention(q, k, v, chunk_size=chunk)
    ref = causal_linear_attention_naive(q, k, v)
    assert out.dtype == torch.float64
    assert _rel(out, ref) < 1e-5
    w = torch.randn_like(ref)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for g, gr in zip(grads, grads_ref):
        assert _rel(g, gr) < 1e-5


def test_kernel_final_state_and_step_parity() -> None:
    """The state returned by the parallel kernel equals the recurrent state after L steps."""
    q, k, v = _inputs(length=21)
    out, state = causal_linear_attention(q.detach(), k.detach(), v.detach(), chunk_size=8, return_state=True)
    st = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    outs = []
    for i in range(21):
        o, st = linear_attention_step(q[:, :, i].detach(), k[:, :, i].detach(), v[:, :, i].detach(), st)
        outs.append(o)
    assert torch.allclose(torch.stack(outs, 2), out, atol=1e-10)
    assert torch.allclose(st, state, atol=1e-10)


def test_kernel_is_causal() -> None:
    q, k, v = _inputs(length=30)
    out = causal_linear_attention(q, k, v, chunk_size=8)
    v2 = v.detach().clone()
    v2[:, :, 20:] += 5.0
    out2 = causal_linear_attention(q, k, v2, chunk_size=8)
    assert torch.allclose(out[:, :, :20], out2[:, :, :20])
    assert not torch.allclose(out[:, :, 20:], out2[:, :, 20:])


def test_kernel_bf16_autocast_accumulates_in_float32() -> None:
    q, k, v = _inputs(length=40, dtype=torch.float32)
    ref = causal_linear_attention(q, k, v, chunk_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_linear_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), chunk_size=16)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert _rel(out, ref) < 2e-2


@pytest.mark.parametrize("length,chunk", [(37, 8), (16, 16), (5, 16)])
def test_chunked_function_gradcheck_and_loop_parity(length: int, chunk: int) -> None:
    """Hand-written backward: gradcheck (output and final-state gradients) and equality with
    autograd through the reference loop followed by the division."""
    from musicgen.model.ops.linear_attention import EPS, chunked_causal_attention
    from reference_kernels import chunked_causal_product_loop

    q, k, v = _inputs(b=1, h=2, length=length, f=3, d=2)
    assert torch.autograd.gradcheck(lambda *a: chunked_causal_attention(*a, chunk), (q, k, v))
    out, st = chunked_causal_attention(q, k, v, chunk)
    num_ref, st_ref = chunked_causal_product_loop(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), chunk)
    out_ref = num_ref[..., :-1] / (num_ref[..., -1:] + EPS)
    w, ws = torch.randn_like(out), torch.randn_like(st)
    grads = torch.autograd.grad((out * w).sum() + (st * ws).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((out_ref * w).sum() + (st_ref * ws).sum(), (q, k, v))
    assert _rel(out, out_ref) < 1e-12 and _rel(st, st_ref) < 1e-12
    for g, gr in zip(grads, grads_ref):
        assert _rel(g, gr) < 1e-10
    # only the final state used (it does not depend on q): key and value gradients still flow
    gs = torch.autograd.grad((chunked_causal_attention(q, k, v, chunk)[1] * ws).sum(), (k, v))
    st_ref = chunked_causal_product_loop(q, k, torch.cat([v, torch.ones_like(v[..., :1])], -1), chunk)[1]
    gs_ref = torch.autograd.grad((st_ref * ws).sum(), (k, v))
    for g, gr in zip(gs, gs_ref):
        assert _rel(g, gr) < 1e-10


@pytest.mark.parametrize("mode", ["train", "inference"])
def test_kernel_rows_split_across_threads(mode: str) -> None:
    """With several CPU threads the kernel shares the (batch x heads) rows out across threads: same
    values, state and gradients as one range, also under inference mode (thread-local in PyTorch)."""
    from musicgen.model.ops.linear_attention import chunked_causal_attention
    from musicgen.model.ops.linear_attention.chunk import _split_rows

    q, k, v = _inputs(b=3, h=2, length=45, f=4, d=3)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        out1, st1 = chunked_causal_attention(q, k, v, 8)
        g1 = torch.autograd.grad((out1 * out1).sum() + st1.sum(), (q, k, v))
        torch.set_num_threads(2)
        assert len(_split_rows(6, q.device)) == 2
        if mode == "inference":
            with torch.inference_mode():
                out2, st2 = chunked_causal_attention(q.detach(), k.detach(), v.detach(), 8)
            assert out2.is_inference()
        else:
            out2, st2 = chunked_causal_attention(q, k, v, 8)
            g2 = torch.autograd.grad((out2 * out2).sum() + st2.sum(), (q, k, v))
            for a, b in zip(g1, g2):
                assert _rel(a, b) < 1e-12
    finally:
        torch.set_num_threads(old)
    assert _rel(out1, out2) < 1e-12 and _rel(st1, st2) < 1e-12


@pytest.mark.parametrize("length,chunk", [(37, 8), (64, 16), (5, 16), (50, 1), (33, 33)])
@pytest.mark.parametrize("with_initial", [False, True])
def test_decay_kernel_values_state_and_grads_vs_naive(length: int, chunk: int, with_initial: bool) -> None:
    """Chunked kernel with per-head decay (and an initial state) vs the quadratic float64 reference:
    outputs, final state, and the gradients of q, k, v, the rates and the initial state."""
    q, k, v = _inputs(length=length)
    rates = torch.tensor([-0.02, -0.3, -1.5], dtype=torch.float64, requires_grad=True)
    init = (torch.rand(2, 3, 5, 5, dtype=torch.float64) * 3).requires_grad_() if with_initial else None
    out, state = causal_linear_attention(q, k, v, chunk_size=chunk, log_gamma=rates, initial=init, return_state=True)
    ref = causal_linear_attention_naive(q, k, v, log_gamma=rates, initial=init)
    assert _rel(out, ref) < 1e-10
    # the final state by its definition: sum_j gamma^(L-1-j) k_j [v_j, 1]^T (+ gamma^L S_init)
    lag = torch.arange(length - 1, -1, -1, dtype=torch.float64)
    weights = torch.exp(rates.view(-1, 1) * lag)
    v1 = torch.cat([v, torch.ones(*v.shape[:-1], 1, dtype=v.dtype)], -1)
    state_ref = torch.einsum("bhlf,bhle,hl->bhfe", k, v1, weights)
    if init is not None:
        state_ref = state_ref + init * torch.exp(rates * length).view(1, -1, 1, 1)
    assert _rel(state, state_ref) < 1e-10
    w, ws = torch.randn_like(ref), torch.randn_like(state)
    inputs = (q, k, v, rates) + ((init,) if init is not None else ())
    grads = torch.autograd.grad((out * w).sum() + (state * ws).sum(), inputs)
    grads_ref = torch.autograd.grad((ref * w).sum() + (state_ref * ws).sum(), inputs)
    for g, gr in zip(grads, grads_ref):
        assert _rel(g, gr) < 1e-8


def test_decay_kernel_gradcheck() -> None:
    q, k, v = _inputs(b=1, h=2, length=11, f=3, d=2)
    rates = torch.tensor([-0.1, -0.7], dtype=torch.float64, requires_grad=True)
    init = torch.rand(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)

    def fn(q, k, v, rates, init):
        out, state = causal_linear_attention(q, k, v, chunk_size=4, log_gamma=rates, initial=init, return_state=True)
        return out, state

    assert torch.autograd.gradcheck(fn, (q, k, v, rates, init))


def test_decay_step_matches_kernel_and_forgets() -> None:
    """The recurrent step with decay reproduces the kernel; a strongly decayed head forgets old values."""
    q, k, v = (t.detach() for t in _inputs(length=40))
    rates = torch.tensor([-0.05, -0.5, -2.0], dtype=torch.float64)
    out, state = causal_linear_attention(q, k, v, chunk_size=16, log_gamma=rates, return_state=True)
    st = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    outs = []
    for i in range(40):
        o, st = linear_attention_step(q[:, :, i], k[:, :, i], v[:, :, i], st, log_gamma=rates)
        outs.append(o)
    assert torch.allclose(torch.stack(outs, 2), out, atol=1e-10)
    assert torch.allclose(st, state, atol=1e-10)
    v2 = v.clone()
    v2[:, :, :20] += 10.0  # change the distant past only
    out2 = causal_linear_attention(q, k, v2, chunk_size=16, log_gamma=rates)
    change = (out2 - out)[:, :, -1].abs().amax(dim=(0, 2))  # per head, at the last position
    assert change[2] < 1e-6 < change[0]  # tau = 0.5 tokens forgets 20 tokens back; tau = 20 does not


def test_decay_kernel_float32_long_sequence_stable() -> None:
    """At 8192 tokens in float32 the decayed kernel stays finite and close to the float64 result."""
    g = torch.Generator().manual_seed(1)
    q = torch.rand(1, 2, 8192, 8, generator=g, dtype=torch.float64)
    k = torch.rand(1, 2, 8192, 8, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 8192, 4, generator=g, dtype=torch.float64)
    rates = torch.tensor([-1 / 16, -1 / 512], dtype=torch.float64)
    ref = causal_linear_attention(q, k, v, chunk_size=64, log_gamma=rates)
    got = causal_linear_attention(q.float(), k.float(), v.float(), chunk_size=64, log_gamma=rates.float())
    assert torch.isfinite(got).all()
    assert _rel(got.double(), ref) < 1e-4


@pytest.mark.parametrize("rates", [None, [-0.05, -0.5, -2.0]])
def test_prefill_step_and_chunked_continuation_share_one_state(rates) -> None:
    """One state format for every form: chunked over [0, 15), stepped over [15, 25) (the functional step and
    the in-place step of the generation hot path), chunked again over [25, 40) from the stepped state ==
    one chunked pass over [0, 40), outputs and final state."""
    from musicgen.model.ops.linear_attention import linear_attention_step_

    q, k, v = (t.detach().float() for t in _inputs(length=40))
    lg = None if rates is None else torch.tensor(rates)
    full, full_state = causal_linear_attention(q, k, v, chunk_size=8, log_gamma=lg, return_state=True)
    head, state = causal_linear_attention(q[:, :, :15], k[:, :, :15], v[:, :, :15], chunk_size=8, log_gamma=lg,
                                          return_state=True)
    inplace = state.clone()
    gamma = None if lg is None else torch.exp(lg).view(1, -1, 1, 1)
    v1 = torch.ones(2, 3, v.shape[-1] + 1)
    mid, mid_inplace = [], []
    for i in range(15, 25):
        o, state = linear_attention_step(q[:, :, i], k[:, :, i], v[:, :, i], state, log_gamma=lg)
        mid.append(o)
        v1[..., :-1].copy_(v[:, :, i])
        o2 = linear_attention_step_(inplace, q[:, :, i].transpose(0, 1), k[:, :, i].transpose(0, 1), v1, gamma)
        mid_inplace.append(o2.view(2, 3, -1))
    tail, end = causal_linear_attention(q[:, :, 25:], k[:, :, 25:], v[:, :, 25:], chunk_size=8, log_gamma=lg,
                                        initial=state, return_state=True)
    got = torch.cat([head, torch.stack(mid, 2), tail], 2)
    assert _rel(got, full) < 1e-5 and _rel(end, full_state) < 1e-5
    assert _rel(torch.stack(mid_inplace, 2), full[:, :, 15:25]) < 1e-5 and _rel(inplace, state) < 1e-6
