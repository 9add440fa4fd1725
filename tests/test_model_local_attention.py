"""The exact softmax window beside the linear attention (``attention.local_window``, model/local_attention.py)."""

from __future__ import annotations

import pytest
import torch

from musicgen.model import build_model
from musicgen.model.local_attention import LocalAttention

from support import VOCAB, small_cfg

WINDOW = 24


def _local_model(dtype: torch.dtype = torch.float32, window: int = WINDOW):
    torch.manual_seed(0)
    cfg = small_cfg(attention__feature_map="elu", attention__decay="learned", attention__decay_tau_min=4.0,
                    attention__decay_tau_max=64.0, attention__local_window=window, attention__local_heads=2)
    model = build_model(cfg, VOCAB).to(dtype).eval()
    with torch.no_grad():  # the branch starts silent: give it weights so that parity is not trivial
        for blk in model.blocks:
            blk.local.proj.weight.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_local_window_step_matches_forward_past_the_window(dtype: torch.dtype) -> None:
    """float64 runs the generic step, float32 the lean generation path; 70 positions wrap the 24-slot ring."""
    model = _local_model(dtype)
    x = torch.randint(1, VOCAB, (2, 70))
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(7))
        state = model.init_state(2, generator=torch.Generator().manual_seed(7))
        outs = []
        for i in range(70):
            lo, state = model.step(x[:, i], state)
            outs.append(lo)
        assert model.lean_step_applies(state) == (dtype == torch.float32)
    assert (torch.stack(outs, 1) - ref).abs().max().item() < (1e-6 if dtype == torch.float64 else 1e-4)


def test_local_window_prefill_then_step_matches_forward() -> None:
    model = _local_model()
    x = torch.randint(1, VOCAB, (2, 90))
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(3))
        logits, state = model.prefill(x[:, :53], generator=torch.Generator().manual_seed(3))
        outs = [logits]
        for i in range(53, 90):
            lo, state = model.step(x[:, i], state)
            outs.append(lo[:, None])
    assert (torch.cat(outs, 1) - ref).abs().max().item() < 1e-4


def test_local_window_sees_exactly_its_window() -> None:
    """Position i depends on tokens i-W+1..i and on nothing earlier: changing token i-W leaves it unchanged,
    changing token i-W+1 does not."""
    torch.manual_seed(0)
    local = LocalAttention(d_model=16, heads=2, head_dim=8, window=10).eval()
    torch.nn.init.normal_(local.proj.weight)
    x = torch.randn(1, 40, 16)
    base = local(x)[0, 30]
    outside, inside = x.clone(), x.clone()
    outside[0, 20] += 1.0
    inside[0, 21] += 1.0
    assert torch.allclose(local(outside)[0, 30], base, atol=1e-6)
    assert (local(inside)[0, 30] - base).abs().max() > 1e-3


def test_local_window_starts_near_the_model_without_it_and_learns_at_once() -> None:
    """Added to a model (``train.init_from`` of a model without it), the window changes its logits only a little,
    and from the first step every one of its parameters gets a gradient (a branch started at exactly zero gives
    its queries and keys none)."""
    torch.manual_seed(0)
    plain = build_model(small_cfg(attention__feature_map="elu"), VOCAB).eval()
    local = build_model(small_cfg(attention__feature_map="elu", attention__local_window=WINDOW), VOCAB).eval()
    missing, unexpected = local.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".local." in name for name in missing)
    x = torch.randint(1, VOCAB, (1, 50))
    a = plain(x, generator=torch.Generator().manual_seed(1))
    b = local(x, generator=torch.Generator().manual_seed(1))
    assert 0 < (a - b).abs().max() < 0.1
    b.logsumexp(-1).sum().backward()
    for blk in local.blocks:
        assert blk.local.proj.weight.grad.abs().max() > 0 and blk.local.qkv.weight.grad.abs().max() > 0


def test_local_window_state_is_constant_in_size() -> None:
    model = _local_model()
    with torch.no_grad():
        state = model.init_state(1, generator=torch.Generator().manual_seed(0))
        sizes = set()
        for i in range(3 * WINDOW):
            _, state = model.step(torch.tensor([i % (VOCAB - 1) + 1]), state)
            sizes.add(tuple(tuple(c["lk"].shape) for c in state.caches))
    assert sizes == {((1, 2, WINDOW, 16),) * 2}


@pytest.mark.parametrize("bad,match", [({"attention__local_window": -1}, "local_window"),
                                       ({"attention__local_window": 8, "attention__local_heads": 0}, "local_heads")])
def test_local_window_options_are_checked(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        build_model(small_cfg(**bad), VOCAB)
