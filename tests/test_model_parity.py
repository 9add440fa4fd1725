"""Recurrent ``step`` (and ``prefill``) reproduce the parallel ``forward`` for every variant."""

from __future__ import annotations

import pytest
import torch

from musicgen.model import build_model

from support import CASES, VOCAB, small_cfg, step_all

@pytest.mark.parametrize("name", sorted(CASES))
def test_step_forward_parity(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(small_cfg(**CASES[name]), VOCAB).eval()
    x = torch.randint(1, VOCAB, (2, 70))
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(7))
        rec = step_all(model, x, seed=7)
    assert ref.shape == rec.shape == (2, 70, VOCAB)
    assert (ref - rec).abs().max().item() < 1e-4


@pytest.mark.parametrize("name", ["spe_sine_gated-performer", "spe_sine-elu"])
def test_step_forward_parity_sine_codes_in_chunks(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel form cuts SineSPE codes into chunks (512 positions in the model); with chunks
    of 16 the 70 positions span five of them, and stepping must still agree."""
    monkeypatch.setattr("musicgen.model.spe.SINE_CHUNK", 16)
    test_step_forward_parity(name)


@pytest.mark.parametrize("name", ["spe_sine_gated-performer", "spe_conv_gated-performer", "softmax-ape", "none-elu",
                                  "spe_sine_gated-performer-decay", "spe_conv-elu-decay"])
def test_prefill_then_step_parity(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(small_cfg(**CASES[name]), VOCAB).eval()
    x = torch.randint(1, VOCAB, (2, 60))
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(3))
        logits, state = model.prefill(x[:, :37], generator=torch.Generator().manual_seed(3))
        outs = [logits]
        for i in range(37, 60):
            lo, state = model.step(x[:, i], state)
            outs.append(lo[:, None])
    assert state.position == 60
    assert (torch.cat(outs, 1) - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("kind", ["spe_sine", "spe_conv"])
def test_parity_is_not_trivial_seed_changes_output(kind: str) -> None:
    """SPE noise really enters the model: another seed gives other logits."""
    torch.manual_seed(0)
    model = build_model(small_cfg(pe__kind=kind), VOCAB).eval()
    x = torch.randint(1, VOCAB, (1, 30))
    with torch.no_grad():
        a = model(x, generator=torch.Generator().manual_seed(1))
        b = model(x, generator=torch.Generator().manual_seed(1))
        c = model(x, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 1e-4


@pytest.mark.parametrize("name,dtype", [("spe_sine_gated-performer-decay", torch.float64),
                                        ("none-elu-decay", torch.float64),
                                        ("spe_sine_gated-performer-decay", torch.float32)])
def test_step_forward_parity_beyond_20000_positions(name: str, dtype: torch.dtype) -> None:
    """Parallel and recurrent forms agree at any length: 20,500 tokens, compared on the last 300.
    float64 runs the generic step, float32 the lean generation path (the modules' step plans, ``model/lean.py``)."""
    torch.manual_seed(0)
    model = build_model(small_cfg(**CASES[name]), VOCAB).to(dtype).eval()
    x = torch.randint(1, VOCAB, (1, 20_500))
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(5))[:, -300:]
        _, state = model.prefill(x[:, :20_200], generator=torch.Generator().manual_seed(5))
        outs = []
        for i in range(20_200, 20_500):
            lo, state = model.step(x[:, i], state)
            outs.append(lo)
    assert state.position == 20_500
    assert (torch.stack(outs, 1) - ref).abs().max().item() < (1e-6 if dtype == torch.float64 else 1e-4)


def test_decay_changes_the_model_and_learned_rates_get_gradients() -> None:
    """Decay really enters the forward pass, and a learned rate receives a gradient."""
    torch.manual_seed(0)
    plain = build_model(small_cfg(), VOCAB).eval()
    decayed = build_model(small_cfg(**CASES["spe_sine_gated-performer-decay"]), VOCAB).eval()
    decayed.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randint(1, VOCAB, (1, 60))
    a = plain(x, generator=torch.Generator().manual_seed(1))
    b = decayed(x, generator=torch.Generator().manual_seed(1))
    assert (a - b).abs().max().item() > 1e-3
    b.logsumexp(-1).sum().backward()
    for blk in decayed.blocks:
        assert blk.attn.decay.log_tau.grad is not None and blk.attn.decay.log_tau.grad.abs().min() > 0


@pytest.mark.parametrize("name", ["spe_sine_gated-performer", "spe_sine_gated-elu-decay", "none-elu", "softmax-ape",
                                  "ape_sinusoidal-performer-decay", "spe_sine-unshared", "local_window"])
def test_prefill_in_chunks_matches_one_pass(name: str) -> None:
    """A prompt read in chunks (each continuing the state of the one before: bounded memory for any prompt
    length) gives the one-pass logits of its last chunk and a state that continues identically."""
    over = {**CASES[name]} if name in CASES else {"attention__feature_map": "elu", "attention__decay": "learned",
                                                    "attention__local_window": 12}
    torch.manual_seed(0)
    model = build_model(small_cfg(**over), VOCAB).eval()
    if name == "local_window":
        with torch.no_grad():
            for blk in model.blocks:
                blk.local.proj.weight.normal_(0.0, 0.3)
    assert model.prefills_in_chunks()
    x = torch.randint(1, VOCAB, (2, 90))
    with torch.no_grad():
        ref = model(x, generator=torch.Generator().manual_seed(3))
        logits, state = model.prefill(x[:, :70], generator=torch.Generator().manual_seed(3), chunk=16)
        assert logits.shape[1] == 70 - 64  # the last chunk's positions
        outs = [logits]
        for i in range(70, 90):
            lo, state = model.step(x[:, i], state)
            outs.append(lo[:, None])
    assert (torch.cat(outs, 1) - ref[:, 64:]).abs().max().item() < 1e-4


def test_prefill_in_chunks_is_refused_where_codes_cannot_start_anywhere() -> None:
    """ConvSPE's noise stream runs from position 0: such a model reads its prompt in one pass, as before."""
    model = build_model(small_cfg(**CASES["spe_conv_gated-performer"]), VOCAB).eval()
    assert not model.prefills_in_chunks()
    x = torch.randint(1, VOCAB, (1, 40))
    with torch.no_grad():
        logits, state = model.prefill(x, generator=torch.Generator().manual_seed(1), chunk=16)
    assert logits.shape[1] == 40 and state.position == 40
