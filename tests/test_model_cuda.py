"""The model on CUDA: same numbers as on the CPU, parity of the two forms, kernels, mixed precision.

Skipped where no CUDA device is present (CI); run on a GPU machine with
`python -m pytest tests/test_model_cuda.py`.
"""

from __future__ import annotations

import pytest
import torch

from musicgen.model import build_model
from musicgen.model.ops.linear_attention import causal_linear_attention
from musicgen.model.ops.sine_filter import sine_filter

from reference_kernels import causal_linear_attention_naive
from support import CASES, VOCAB, small_cfg, step_all

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA_CASES = ["spe_sine_gated-performer", "spe_sine-elu", "spe_conv_gated-performer", "ape_sinusoidal-elu",
              "softmax-ape", "none-performer", "spe_sine_gated-elu-decay", "none-elu-decay"]


@pytest.fixture(autouse=True)
def _exact_fp32():
    """TF32 would make float32 products ~1e-3 accurate; parity is about the algorithm, not TF32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("name", CUDA_CASES)
def test_cuda_parity_step_vs_forward(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("musicgen.model.spe.SINE_CHUNK", 16)  # several SineSPE chunks in 70 positions
    torch.manual_seed(0)
    model = build_model(small_cfg(**CASES[name]), VOCAB).cuda().eval()
    x = torch.randint(1, VOCAB, (2, 70), device="cuda")
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(7))
        rec = step_all(model, x, seed=7)
    assert (ref - rec).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", [c for c in CUDA_CASES if "conv" not in c])
def test_cuda_matches_cpu_forward_and_gradients(name: str) -> None:
    """Same weights, same (CPU-generator) noise: logits and gradients agree across devices.

    ConvSPE is left out on purpose: its noise stream is drawn by a generator on the model's
    device (CPU-drawn noise would cost seconds per long training crop), so its draws, and hence
    its logits, differ between devices for the same seed; its step/forward parity on CUDA is
    tested above."""
    torch.manual_seed(0)
    cpu = build_model(small_cfg(**CASES[name]), VOCAB).train()
    gpu = build_model(small_cfg(**CASES[name]), VOCAB).cuda().train()
    gpu.load_state_dict(cpu.state_dict())
    for m in (cpu, gpu):
        for mod in m.modules():
            if isinstance(mod, torch.nn.Dropout):
                mod.p = 0.0
    x = torch.randint(1, VOCAB, (2, 70))
    outs = []
    for m, dev in ((cpu, "cpu"), (gpu, "cuda")):
        logits = m(x.to(dev), generator=torch.Generator().manual_seed(5))
        logits.float().logsumexp(-1).mean().backward()
        outs.append((logits.detach().cpu(), {n: p.grad.cpu() for n, p in m.named_parameters() if p.grad is not None}))
    (lc, gc), (lg, gg) = outs
    assert (lc - lg).abs().max().item() < 1e-4
    assert gc.keys() == gg.keys()
    for n in gc:
        assert torch.allclose(gc[n], gg[n], rtol=1e-3, atol=1e-5), n


def test_cuda_chunked_kernel_parity_float64() -> None:
    """The chunked kernel does not assume a CPU: values and gradients equal the quadratic reference."""
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (2, 3, 150, 8)
    q, k = (torch.rand(shape, device="cuda", dtype=torch.float64, generator=g).requires_grad_() for _ in range(2))
    v = torch.randn(2, 3, 150, 5, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    out = causal_linear_attention(q, k, v, chunk_size=32)
    ref = causal_linear_attention_naive(q, k, v)
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_cuda_decay_kernel_parity_float64() -> None:
    """The decayed kernel with an initial state on CUDA: values and gradients (rates included) equal the
    quadratic reference."""
    g = torch.Generator(device="cuda").manual_seed(0)
    shape = (2, 3, 150, 8)
    q, k = (torch.rand(shape, device="cuda", dtype=torch.float64, generator=g).requires_grad_() for _ in range(2))
    v = torch.randn(2, 3, 150, 5, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    rates = torch.tensor([-0.01, -0.1, -1.0], device="cuda", dtype=torch.float64, requires_grad=True)
    init = torch.rand(2, 3, 8, 6, device="cuda", dtype=torch.float64, generator=g, requires_grad=True)
    out = causal_linear_attention(q, k, v, chunk_size=32, log_gamma=rates, initial=init)
    ref = causal_linear_attention_naive(q, k, v, log_gamma=rates, initial=init)
    assert torch.allclose(out, ref, rtol=1e-10, atol=1e-12)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v, rates, init))
    grads_ref = torch.autograd.grad((ref * w).sum(), (q, k, v, rates, init))
    for a, b in zip(grads, grads_ref):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_cuda_sine_filter_gradcheck() -> None:
    torch.manual_seed(0)
    dev, dt = "cuda", torch.float64
    x = torch.randn(2, 2, 2, 7, 3, device=dev, dtype=dt, requires_grad=True)
    omega = torch.randn(2, 2, 3, 4, 3, device=dev, dtype=dt, requires_grad=True)
    weights = torch.randn(3, 2, 4, 3, 2, device=dev, dtype=dt, requires_grad=True)
    xg = torch.randn_like(x).requires_grad_()
    gw = torch.randn(2, 3, 2, device=dev, dtype=dt, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: torch.cat(sine_filter(*a)), (x, omega, weights, xg, gw))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["spe_sine_gated-performer", "spe_conv_gated-performer", "softmax-spe_sine_gated",
                                  "spe_sine_gated-elu-decay"])
def test_cuda_autocast_training_step(name: str, dtype: torch.dtype) -> None:
    """Mixed precision: finite loss and gradients, loss within 2% of float32."""
    torch.manual_seed(0)
    model = build_model(small_cfg(**CASES[name]), VOCAB).cuda().train()
    x = torch.randint(1, VOCAB, (4, 300), device="cuda")

    def loss_of(enabled: bool) -> torch.Tensor:
        with torch.autocast("cuda", dtype=dtype, enabled=enabled):
            logits = model(x[:, :-1], generator=torch.Generator().manual_seed(1))
        return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())

    ref = loss_of(False).item()
    loss = loss_of(True)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref) < 0.02 * ref
    for n, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), n


@pytest.mark.parametrize("name,batch", [("spe_sine_gated-elu-decay", 1), ("spe_sine_gated-elu-decay", 4),
                                        ("ape_sinusoidal-elu", 1), ("none-performer", 2)])
def test_cuda_graph_step_matches_eager(name: str, batch: int) -> None:
    """``model.step_graphs``: the lean step replayed from a CUDA graph gives the eager lean step's logits over
    300 steps (the last ones past position 70,000), and captures once per plan."""
    torch.manual_seed(0)
    model = build_model(small_cfg(**CASES[name]), VOCAB).cuda().eval()
    toks = torch.randint(1, VOCAB, (batch, 300), device="cuda")
    runs = []
    for graphs in (False, True):
        model.step_graphs = graphs
        with torch.inference_mode():
            st = model.init_state(batch, device="cuda", generator=torch.Generator().manual_seed(1))
            out = []
            for t in range(300):
                if t == 200:
                    st.position = 70_000  # a far position: the SPE phases come from the device position
                logits, st = model.step(toks[:, t], st)
                out.append(logits)
        runs.append((torch.stack(out), st))
    (eager, st_e), (graphed, st_g) = runs
    assert st_e.graph is None and st_g.graph not in (None, False)
    assert st_g.position == st_e.position == 70_100
    assert (graphed - eager).abs().max().item() < 1e-5
    for a, b in zip(st_e.caches, st_g.caches):
        assert (a["state"] - b["state"]).abs().max().item() < 1e-4 * a["state"].abs().max().item()
    model.step_graphs = False
