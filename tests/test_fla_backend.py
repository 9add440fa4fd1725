"""attention.backend=fla: the adapter onto flash-linear-attention's Triton kernels (musicgen/model/ops/linear_attention/fla.py).

Two kinds of tests, labelled as such:

* CPU **adapter** tests (run everywhere): fla's kernels cannot run on a CPU (not even under Triton's
  interpreter, TRITON_INTERPRET=1: fla 0.6's autotuner needs a GPU driver and its kernels call tensor methods
  on the interpreter's Python ints), so these substitute ``simple_gla_contract`` (tests/reference_kernels.py), a
  plain-torch implementation of fla's documented contract, for the kernel. They check *our* side: layouts and
  transposes, the ones column and the division, decay passed as g (learned, gets a gradient) or g_gamma (no
  gradient needed), the initial / final state in our (B, H, F, D+1) layout, the dtype policy, the errors, and
  a whole model on the fla path against the torch kernel. They do not check fla itself.
* The GPU form of the SineSPE filter (all chunks in one batched GEMM, ``sine_filter(batched=True)``, the
  default on CUDA) is plain torch: the whole model with it is tested here; its gradcheck and its equality with
  the chunk loop are in tests/test_model_sine_filter.py.
* The CUDA-graph generation step (``model.step_graphs``): its capture is CUDA-only (tests/test_model_cuda.py);
  here, that the step body it records takes the position as a device tensor with the eager step's numbers, and
  that the option does nothing on a CPU.
* CUDA **kernel parity** tests: the real kernels against the torch backend, values and gradients, fp32 and
  bf16, with and without decay, SPE and an initial state, lengths not a multiple of fla's 64-token chunk.
  Skipped without CUDA or without fla (``pip install .[gpu]``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from musicgen.model import build_model
from musicgen.model.ops.linear_attention import FlaMissing, FlaUnsupported, causal_linear_attention, fla_available
from musicgen.model.ops.linear_attention import fla as fla_mod

from reference_kernels import simple_gla_contract
from support import VOCAB, small_cfg

HAS_CUDA = torch.cuda.is_available()
HAS_FLA = fla_available()
needs_fla_cuda = pytest.mark.skipif(
    not (HAS_CUDA and HAS_FLA),
    reason="real-kernel parity needs a CUDA device and fla-core (`pip install .[gpu]`)"
           + ("" if HAS_CUDA else "; no CUDA device here") + ("" if HAS_FLA else "; fla is not installed"))


class _Spy:
    """The contract kernel, recording the arguments the adapter passes."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, q, k, v, **kw):
        self.calls.append({"q": q, "k": k, "v": v, **kw})
        return simple_gla_contract(q, k, v, **kw)


@pytest.fixture
def contract(monkeypatch: pytest.MonkeyPatch) -> _Spy:
    """Route backend=fla to the contract kernel on any device (adapter tests only)."""
    spy = _Spy()
    monkeypatch.setattr(fla_mod, "load_kernel", lambda device, dtype: spy)
    monkeypatch.setattr("musicgen.model.attention.require_fla", lambda: spy)
    return spy


def _inputs(b=2, h=3, length=37, f=8, d=5, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    q = F.elu(torch.randn(b, h, length, f, generator=g, device=device, dtype=dtype)) + 1
    k = F.elu(torch.randn(b, h, length, f, generator=g, device=device, dtype=dtype)) + 1
    v = torch.randn(b, h, length, d, generator=g, device=device, dtype=dtype)
    init = torch.rand(b, h, f, d + 1, generator=g, device=device, dtype=dtype) * 3
    rates = -1.0 / torch.tensor([4.0, 30.0, 300.0][:h] + [100.0] * max(0, h - 3), device=device, dtype=dtype)
    return q, k, v, init, rates


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Max abs difference relative to the reference's max magnitude."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()


def _run(backend: str, q, k, v, init, rates, decay: str, with_init: bool, weights, chunk: int = 16):
    """out and state of one backend, and the gradients of sum(w_o out) + sum(w_s state) w.r.t. every input."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    lg = None
    if decay == "learned":
        lg = rates.detach().clone().requires_grad_()
        leaves.append(lg)
    elif decay == "fixed":
        lg = rates.detach().clone()
    initial = None
    if with_init:
        initial = init.detach().clone().requires_grad_()
        leaves.append(initial)
    out, state = causal_linear_attention(*leaves[:3], chunk_size=chunk, backend=backend, return_state=True,
                                         log_gamma=lg, initial=initial)
    loss = (out * weights[0]).sum() + (state * weights[1]).sum()
    grads = torch.autograd.grad(loss, leaves)
    return out.detach(), state.detach(), grads


# CPU adapter tests (fla's contract substituted for the kernel) -----------------------------------------------
@pytest.mark.parametrize("decay", ["none", "fixed", "learned"])
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("length", [37, 64, 70])
def test_adapter_matches_torch_kernel(contract: _Spy, decay: str, with_init: bool, length: int) -> None:
    """Adapter test: values, final state and gradients (rates and initial state included) equal the torch kernel."""
    q, k, v, init, rates = _inputs(length=length)
    w = (torch.randn(2, 3, length, 5), torch.randn(2, 3, 8, 6))
    out_t, st_t, g_t = _run("torch", q, k, v, init, rates, decay, with_init, w)
    out_f, st_f, g_f = _run("fla", q, k, v, init, rates, decay, with_init, w)
    assert len(contract.calls) == 1
    assert out_f.shape == out_t.shape and st_f.shape == st_t.shape == (2, 3, 8, 6)
    assert _rel(out_f, out_t) < 1e-5 and _rel(st_f, st_t) < 1e-5
    assert len(g_f) == len(g_t)
    for a, b in zip(g_f, g_t):
        assert _rel(a, b) < 1e-4


def test_adapter_passes_fla_its_layouts(contract: _Spy) -> None:
    """Adapter test: (B, T, H, K) inputs, [v, 1] with D+1 columns, scale 1, a final state asked for, and the
    decay as per-token g when the rates need a gradient (fla returns none for g_gamma), g_gamma otherwise."""
    q, k, v, init, rates = _inputs()
    causal_linear_attention(q, k, v, backend="fla", log_gamma=rates.clone().requires_grad_(), initial=init)
    causal_linear_attention(q, k, v, backend="fla", log_gamma=rates)
    learned, fixed = contract.calls
    assert learned["q"].shape == learned["k"].shape == (2, 37, 3, 8)
    assert torch.equal(learned["q"], q.transpose(1, 2)) and torch.equal(learned["k"], k.transpose(1, 2))
    assert learned["v"].shape == (2, 37, 3, 6)
    assert torch.equal(learned["v"][..., :5], v.transpose(1, 2)) and bool((learned["v"][..., 5] == 1).all())
    assert learned["scale"] == 1.0 and learned["output_final_state"] is True
    assert learned["g_gamma"] is None and learned["g"].shape == (2, 37, 3) and learned["g"].requires_grad
    assert torch.equal(learned["g"][1, 20], rates)
    assert torch.equal(learned["initial_state"], init)
    assert fixed["g"] is None and torch.equal(fixed["g_gamma"], rates) and fixed["initial_state"] is None


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_adapter_dtype_policy(contract: _Spy, autocast: torch.dtype | None) -> None:
    """Adapter test: bf16 kernel inputs under half-precision autocast (fp16 too: performer features exceed its
    range), float32 otherwise; the division, the output and the state are float32 either way."""
    q, k, v, init, rates = _inputs()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        out, state = causal_linear_attention(q, k, v, backend="fla", return_state=True, log_gamma=rates, initial=init)
    call = contract.calls[0]
    want = torch.float32 if autocast is None else torch.bfloat16
    assert call["q"].dtype == call["k"].dtype == call["v"].dtype == want
    assert call["initial_state"].dtype == torch.float32
    assert out.dtype == state.dtype == torch.float32
    ref = causal_linear_attention(q, k, v, backend="torch", log_gamma=rates, initial=init)
    assert _rel(out, ref) < (1e-5 if autocast is None else 3e-2)


def _model_pair(backend: str, **over):
    cfg = dict(attention__feature_map="elu", attention__decay="learned", dropout=0.0, **over)
    torch.manual_seed(0)
    ref = build_model(small_cfg(attention__backend="torch", **cfg), VOCAB).train()
    other = build_model(small_cfg(attention__backend=backend, **cfg), VOCAB).train()
    other.load_state_dict(ref.state_dict())
    return ref, other


@pytest.mark.parametrize("pe", ["spe_sine", "none"])
def test_adapter_whole_model_matches_torch_backend(contract: _Spy, pe: str) -> None:
    """Adapter test: the shipped architecture (gated SineSPE, elu features, learned decay) and its no-PE twin
    on the fla path: logits and every parameter gradient (decay rates included) equal the torch kernel's."""
    ref, model = _model_pair("fla", pe__kind=pe)
    x = torch.randint(1, VOCAB, (2, 70))
    grads = []
    for m in (ref, model):
        logits = m(x, generator=torch.Generator().manual_seed(4))
        F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        grads.append((logits.detach(), {n: p.grad for n, p in m.named_parameters() if p.grad is not None}))
    (lr, gr), (lf, gf) = grads
    assert len(contract.calls) == 2  # one per layer
    assert _rel(lf, lr) < 1e-5
    assert gr.keys() == gf.keys() and any("log_tau" in n for n in gf)
    for n in gr:
        assert _rel(gf[n], gr[n]) < 1e-4, n


def test_adapter_prefill_state_continues_with_steps(contract: _Spy) -> None:
    """Adapter test: a prompt prefilled on the fla path leaves the (B, H, F, D+1) state the recurrent steps
    continue from: the next logits equal the torch backend's prefill + steps."""
    ref, model = _model_pair("fla")
    ref.eval(), model.eval()
    x = torch.randint(1, VOCAB, (2, 50))
    out = []
    for m in (ref, model):
        with torch.no_grad():
            logits, state = m.prefill(x[:, :40], generator=torch.Generator().manual_seed(2))
            steps = []
            for t in range(40, 50):
                lt, state = m.step(x[:, t], state)
                steps.append(lt)
        out.append((logits, torch.stack(steps, 1)))
    assert contract.calls and all(c["g_gamma"] is not None for c in contract.calls)  # no grad: g_gamma
    assert _rel(out[1][0], out[0][0]) < 1e-5 and _rel(out[1][1], out[0][1]) < 1e-5


# errors ---------------------------------------------------------------------------------------------------------
def test_fla_backend_on_cpu_tensors_is_one_clear_error() -> None:
    q, k, v, _, _ = _inputs()
    with pytest.raises(FlaUnsupported, match=r"runs on CUDA tensors only \(got cpu\).*backend=auto") as err:
        causal_linear_attention(q, k, v, backend="fla")
    assert "\n" not in str(err.value)


@pytest.mark.skipif(HAS_FLA, reason="fla is installed here: the missing-package error cannot be shown")
def test_fla_backend_without_fla_is_one_clear_error() -> None:
    with pytest.raises(FlaMissing, match=r"fla-core.*pip install \.\[gpu\]") as err:
        build_model(small_cfg(attention__backend="fla"), VOCAB)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ImportError)
    # auto never needs it: it builds, and runs the torch kernel on this machine
    build_model(small_cfg(attention__backend="auto"), VOCAB)


# the SineSPE filter's GPU form (plain torch: runs here) ---------------------------------------------------------
def test_batched_sine_filter_whole_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped architecture with the GPU form of the filter forced on the CPU: logits and gradients equal the
    chunk loop's (float32 summation order only)."""
    monkeypatch.setattr("musicgen.model.spe.SINE_CHUNK", 16)  # several chunks in 70 positions
    torch.manual_seed(0)
    cfg = small_cfg(attention__feature_map="elu", attention__decay="learned", dropout=0.0)
    model = build_model(cfg, VOCAB).train()
    x = torch.randint(1, VOCAB, (2, 70))
    res = []
    for batched in (False, True):
        monkeypatch.setattr("musicgen.model.ops.sine_filter._batched_default", lambda device, b=batched: b)
        model.zero_grad()
        logits = model(x, generator=torch.Generator().manual_seed(4))
        F.cross_entropy(logits[:, :-1].flatten(0, 1), x[:, 1:].flatten()).backward()
        res.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (la, ga), (lb, gb) = res
    assert _rel(lb, la) < 1e-5
    assert any("freqs" in n for n in ga) and any("gate" in n for n in ga)
    for n in ga:
        assert _rel(gb[n], ga[n]) < 1e-4, n


# the CUDA-graph step's body, on a CPU -----------------------------------------------------------------------------
@pytest.mark.parametrize("pe", ["spe_sine", "ape"])
def test_lean_body_with_a_tensor_position_equals_the_eager_step(pe: str) -> None:
    """The graph records ``_lean_body`` with the position in a float64 0-d tensor (SPE phases, sinusoidal APE):
    the logits equal the eager lean step's, bit for bit, far from position 0 too."""
    torch.manual_seed(0)
    model = build_model(small_cfg(pe__kind=pe, attention__feature_map="elu", attention__decay="learned"), VOCAB).eval()
    toks = torch.randint(1, VOCAB, (2, 12))
    with torch.inference_mode():
        a = model.init_state(2, generator=torch.Generator().manual_seed(1))
        b = model.init_state(2, generator=torch.Generator().manual_seed(1))
        a.position = b.position = 100_003
        for t in range(12):
            la, a = model.step(toks[:, t], a)
            plan = model.step_plan(b)
            lb = model._lean_body(plan, toks[:, t], torch.tensor(float(b.position), dtype=torch.float64))
            b.position += 1
            assert torch.equal(la, lb), t
    assert a.plan is not None and a.graph is None


def test_step_graphs_option_is_inert_on_cpu() -> None:
    torch.manual_seed(0)
    model = build_model(small_cfg(attention__decay="learned"), VOCAB).eval()
    toks = torch.randint(1, VOCAB, (1, 8))
    outs = []
    for graphs in (False, True):
        model.step_graphs = graphs
        with torch.inference_mode():
            st = model.init_state(1, generator=torch.Generator().manual_seed(1))
            outs.append(torch.stack([model.step(toks[:, t], st)[0] for t in range(8)]))
        assert st.graph is None
    assert torch.equal(outs[0], outs[1])


# CUDA: the real kernels -----------------------------------------------------------------------------------------
@pytest.fixture
def _no_tf32():
    """The torch reference in IEEE float32 (fla's own fp32 dots use TF32: the tolerances below allow for it)."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


#: max |fla - torch| / max |torch| allowed: fp32 inputs meet TF32 dots in fla; bf16 inputs one bf16 rounding
TOL = {"fp32": {"out": 5e-3, "grad": 1e-2}, "bf16": {"out": 3e-2, "grad": 6e-2}}


@needs_fla_cuda
@pytest.mark.usefixtures("_no_tf32")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("decay", ["none", "fixed", "learned"])
@pytest.mark.parametrize("with_init", [False, True])
@pytest.mark.parametrize("length", [100, 293])
def test_cuda_fla_kernel_parity(precision: str, decay: str, with_init: bool, length: int) -> None:
    """Real kernels vs the torch kernel (fp32): values, final state and gradients of q, k, v, rates, initial."""
    q, k, v, init, rates = _inputs(b=2, h=4, length=length, f=64, d=64, device="cuda", seed=1)
    w = (torch.randn(2, 4, length, 64, device="cuda"), torch.randn(2, 4, 64, 65, device="cuda") / length)
    out_t, st_t, g_t = _run("torch", q, k, v, init, rates, decay, with_init, w, chunk=64)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
        out_f, st_f, g_f = _run("fla", q, k, v, init, rates, decay, with_init, w)
    tol = TOL[precision]
    assert out_f.dtype == st_f.dtype == torch.float32
    assert _rel(out_f, out_t) < tol["out"], "output"
    assert _rel(st_f, st_t) < tol["out"], "final state"
    names = ["q", "k", "v"] + (["log_gamma"] if decay == "learned" else []) + (["initial"] if with_init else [])
    for name, a, b in zip(names, g_f, g_t):
        assert torch.isfinite(a).all(), name
        assert _rel(a, b) < tol["grad"], name


@needs_fla_cuda
@pytest.mark.usefixtures("_no_tf32")
@pytest.mark.parametrize("pe", ["spe_sine", "none"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_fla_whole_model_parity(pe: str, precision: str) -> None:
    """The shipped architecture (and its no-PE twin) on fla vs the torch kernel, same weights and noise:
    logits, loss and gradients; bf16 runs the whole model under autocast (the torch kernel stays fp32)."""
    ref, model = _model_pair("fla", pe__kind=pe, d_model=128, n_heads=2, attention__n_features=64)
    ref, model = ref.cuda(), model.cuda()
    x = torch.randint(1, VOCAB, (2, 301), device="cuda")
    res = []
    for m in (ref, model):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = m(x[:, :-1], generator=torch.Generator().manual_seed(4))
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        res.append((logits.float().detach(), loss.item(),
                    {n: p.grad.float() for n, p in m.named_parameters() if p.grad is not None}))
    (lr, loss_r, gr), (lf, loss_f, gf) = res
    assert abs(loss_f - loss_r) < (2e-3 if precision == "fp32" else 1e-2) * loss_r
    assert _rel(lf, lr) < (5e-3 if precision == "fp32" else 5e-2)
    for n in gr:
        cos = F.cosine_similarity(gf[n].flatten(), gr[n].flatten(), dim=0).item()
        assert cos > (0.999 if precision == "fp32" else 0.98), (n, cos)


@needs_fla_cuda
def test_cuda_auto_backend_uses_fla() -> None:
    """backend=auto on CUDA tensors takes the fla path (and the torch kernel for float64)."""
    q, k, v, _, _ = _inputs(device="cuda")
    calls = []
    real = fla_mod.fla_causal_linear_attention

    def spy(*a, **kw):
        calls.append(a[0].dtype)
        return real(*a, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("musicgen.model.ops.linear_attention.chunk.fla_causal_linear_attention", spy)
        causal_linear_attention(q, k, v, backend="auto")
        causal_linear_attention(q.double(), k.double(), v.double(), backend="auto")
    assert calls == [torch.float32]
