"""Recurrent generation: constant-size state, no maximum length (except learned APE)."""

from __future__ import annotations

import pytest
import torch

from musicgen.model import build_model
from support import VOCAB, small_cfg

UNBOUNDED = {
    "spe_sine_gated": {"pe__kind": "spe_sine"},
    "spe_conv_gated": {"pe__kind": "spe_conv"},
    "none": {"pe__kind": "none"},
    "ape_sinusoidal": {"pe__kind": "ape", "pe__ape": "sinusoidal"},
}


@pytest.mark.parametrize("name", sorted(UNBOUNDED))
def test_state_size_independent_of_position(name: str) -> None:
    model = build_model(small_cfg(**UNBOUNDED[name]), VOCAB).eval()
    tok = torch.randint(1, VOCAB, (2,))
    with torch.no_grad():
        state = model.init_state(2, generator=torch.Generator().manual_seed(0))
        _, state = model.step(tok, state)
        sizes = {1: state.nbytes()}
        for _ in range(49):  # > kernel_size (24): the ConvSPE ring buffer has wrapped around
            _, state = model.step(tok, state)
        sizes[50] = state.nbytes()
    assert sizes[1] == sizes[50] > 0


@pytest.mark.parametrize("name", sorted(UNBOUNDED))
def test_generation_beyond_max_len(name: str) -> None:
    """pe.max_len=32 and positions far beyond: no table, no error, finite logits."""
    model = build_model(small_cfg(**UNBOUNDED[name], pe__max_len=32), VOCAB).eval()
    x = torch.randint(1, VOCAB, (1, 40))
    with torch.no_grad():
        _, state = model.prefill(x, generator=torch.Generator().manual_seed(0))  # 40 > max_len
        for _ in range(3):
            logits, state = model.step(x[:, -1], state)
        assert torch.isfinite(logits).all() and state.position == 43
        state.position = 200_000  # the recurrent state does not care how it got there
        for _ in range(3):
            logits, state = model.step(x[:, -1], state)
    assert torch.isfinite(logits).all()


def test_learned_ape_refuses_positions_beyond_table() -> None:
    model = build_model(small_cfg(pe__kind="ape", pe__ape="learned", pe__max_len=16), VOCAB).eval()
    with pytest.raises(ValueError, match="pe.max_len"):
        model(torch.randint(1, VOCAB, (1, 17)))


def test_softmax_kv_cache_preallocated_and_grows() -> None:
    model = build_model(small_cfg(attention__kind="softmax", pe__kind="ape"), VOCAB).eval()
    state = model.init_state(1, max_len=8)
    assert state.caches[0]["k"].shape[2] == 8
    tok = torch.tensor([3])
    with torch.no_grad():
        for _ in range(12):
            logits, state = model.step(tok, state)
    assert state.caches[0]["k"].shape[2] == 16 and torch.isfinite(logits).all()


def test_generation_seed_reproducible_and_sampling_loop() -> None:
    model = build_model(small_cfg(), VOCAB).eval()

    def sample(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        state = model.init_state(1, generator=g)
        tok, out = torch.tensor([1]), []
        with torch.no_grad():
            for _ in range(20):
                logits, state = model.step(tok, state)
                tok = torch.multinomial(logits.softmax(-1), 1, generator=g)[:, 0]
                out.append(int(tok))
        return out

    assert sample(5) == sample(5)


@pytest.mark.parametrize("name", ["spe_sine_gated", "none"])
def test_lean_step_matches_generic_step(name: str) -> None:
    """The lean no-grad step (cached per-sequence plan, in-place state) equals the generic path
    (taken when gradients are enabled), also after the parameters change in place."""
    model = build_model(small_cfg(**UNBOUNDED[name], attention__feature_map="performer"), VOCAB).eval()
    x = torch.randint(1, VOCAB, (2, 20))
    for attempt in range(2):
        fast = model.init_state(2, generator=torch.Generator().manual_seed(4))
        slow = model.init_state(2, generator=torch.Generator().manual_seed(4))
        for i in range(20):
            with torch.no_grad():
                assert model.lean_step_applies(fast)
                lf, fast = model.step(x[:, i], fast)
            ls, slow = model.step(x[:, i], slow)  # grad enabled: generic path
            assert (lf - ls.detach()).abs().max().item() < 1e-5
        assert fast.plan is not None and fast.position == slow.position == 20
        with torch.no_grad():  # in-place update: the cached plan must be rebuilt
            for p in model.parameters():
                p.mul_(1.1)
