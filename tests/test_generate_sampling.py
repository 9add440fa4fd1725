"""Sampling and the recurrent generation loop: filters, grammar-constrained decoding, stop rules, constant memory.

All models here are tiny and untrained: what is tested is the machinery, not the music.
"""

from __future__ import annotations

import pytest
import torch

from musicgen.config import UserError
from musicgen.generation import (GenerationSession, SamplingConfig, StopConfig, filter_logits, sample_next,
                                 state_nbytes, unconditional_prompt)
from musicgen.generation.sampling import RepetitionPenalty
from musicgen.tokenizer import REMITokenizer, TokenType



# --- sampling filters ----------------------------------------------------------------------------------------
def test_top_k_top_p_temperature_and_mask() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    keep = lambda cfg, allowed=None: torch.isfinite(filter_logits(logits, allowed, cfg))[0].tolist()  # noqa: E731
    assert keep(SamplingConfig(top_k=2)) == [True, True, False, False]
    assert keep(SamplingConfig(top_p=0.7)) == [True, True, False, False]  # 0.5 < 0.7 <= 0.8
    assert keep(SamplingConfig(top_p=0.5)) == [True, False, False, False]
    assert keep(SamplingConfig(top_p=1e-6)) == [True, False, False, False]  # the best token always survives
    allowed = torch.tensor([[False, True, True, True]])
    assert keep(SamplingConfig(top_k=1), allowed) == [False, True, False, False]  # top-k among allowed tokens
    greedy = sample_next(logits, allowed, SamplingConfig(temperature=0))
    assert greedy.tolist() == [1]
    gen = torch.Generator().manual_seed(0)
    draws = sample_next(logits.expand(2000, 4), allowed.expand(2000, 4), SamplingConfig(), gen)
    assert (draws != 0).all()
    assert abs((draws == 1).float().mean().item() - 0.6) < 0.05  # 0.3 / 0.5 renormalised


def test_repetition_guard_penalises_recent_pitches(tokenizer: REMITokenizer) -> None:
    vocab = tokenizer.vocab
    pitches = vocab.ids_of_type(TokenType.PITCH)
    rule = RepetitionPenalty(1, len(vocab), pitches, window=2, penalty=2.0)
    for pitch in (60, 62, 64):
        rule.observe(0, None, vocab.id_of(TokenType.PITCH, pitch), continuation=True)
    rule.observe(0, None, vocab.bar_id, continuation=True)  # not a pitch: ignored
    guarded = rule.history.mask()[0]
    assert [bool(guarded[vocab.id_of(TokenType.PITCH, p)]) for p in (60, 62, 64)] == [False, True, True]
    logits = torch.full((1, len(vocab)), 2.0)
    out = rule.process(logits, None)
    assert out[0, vocab.id_of(TokenType.PITCH, 64)] == 1.0 and out[0, vocab.id_of(TokenType.PITCH, 60)] == 2.0


@pytest.mark.parametrize("kwargs", [{"top_p": 0.0}, {"top_p": 1.5}, {"temperature": -1}, {"top_k": -2},
                                    {"repetition_penalty": 0.5}])
def test_bad_sampling_options(kwargs: dict) -> None:
    with pytest.raises(UserError):
        SamplingConfig(**kwargs)


# --- the loop ------------------------------------------------------------------------------------------------
def _session(model, tokenizer, seed=0, sampling=None, **stop) -> GenerationSession:
    return GenerationSession(model, tokenizer, sampling or SamplingConfig(), StopConfig(**stop), seed)


def test_grammar_constrained_sampling_always_decodes(model, tokenizer: REMITokenizer) -> None:
    """50 samples of an untrained model under the grammar mask: every one decodes with zero skipped tokens."""
    results = _session(model, tokenizer, seed=3, sampling=SamplingConfig(temperature=1.5), tokens=150).run(
        unconditional_prompt(tokenizer), 50, progress=False)
    assert len(results) == 50
    reports = [tokenizer.decode_with_report(r.ids)[1] for r in results]
    assert [r.skipped for r in reports] == [0] * 50
    assert sum(r.notes for r in reports) > 0
    assert all(r.ids[0] == tokenizer.vocab.bos_id and r.ids[-1] == tokenizer.vocab.eos_id for r in results)


def test_same_seed_same_tokens(model, tokenizer: REMITokenizer) -> None:
    run = lambda seed: [r.ids for r in _session(model, tokenizer, seed=seed, tokens=80).run(  # noqa: E731
        unconditional_prompt(tokenizer), 3, progress=False)]
    first = run(11)
    assert run(11) == first
    assert run(12) != first
    assert len({tuple(ids) for ids in first}) == 3  # the batch's samples differ from each other


def test_stop_conditions(model, tokenizer: REMITokenizer) -> None:
    prompt = unconditional_prompt(tokenizer)
    vocab = tokenizer.vocab
    for r in _session(model, tokenizer, bars=2, allow_eos=False, max_tokens=2000).run(prompt, 4, progress=False):
        assert r.stop_reason in ("bars", "max_tokens")
        assert r.ids[1:].count(vocab.bar_id) <= 2 and vocab.eos_id not in r.ids[:-1]
    for r in _session(model, tokenizer, tokens=37, allow_eos=False).run(prompt, 4, progress=False):
        assert r.stop_reason == "tokens" and len(r.ids) - r.prompt_length <= 38
    for r in _session(model, tokenizer, seconds=3.0, allow_eos=False, max_tokens=3000).run(prompt, 4,
                                                                                           progress=False):
        assert r.stop_reason in ("seconds", "max_tokens") and r.continuation_seconds < 3.0


def test_state_memory_constant_over_length(model, tokenizer: REMITokenizer) -> None:
    """The recurrent state is as big after 1000 steps as after 10: memory does not grow with length."""
    session = _session(model, tokenizer, tokens=5000, allow_eos=False)
    logits, tracks, _ = session.feed_prompt(unconditional_prompt(tokenizer), 2)
    sizes = {}
    for step in range(1, 1001):
        logits = session.step(logits, tracks)
        if step in (10, 1000):
            sizes[step] = state_nbytes(session.state)
    assert session.state.position == 1001
    assert sizes[10] == sizes[1000] > 0


def test_prompt_prefill_once_matches_stepping_every_sequence(model, tokenizer: REMITokenizer, pop909_dir) -> None:
    """feed_prompt runs the prompt once in parallel and copies the state to the batch: the next logits and the
    state after more steps equal stepping the whole batch through the prompt token by token."""
    from musicgen.generation.prompt import load_prompt
    from musicgen.generation.session import split_seed

    prompt = load_prompt(pop909_dir / "003.mid", tokenizer, prompt_bars=2, time_signature="index")
    session = _session(model, tokenizer, seed=4, tokens=50)
    logits, tracks, _ = session.feed_prompt(prompt, 3)
    noise = torch.Generator().manual_seed(split_seed(4)[0])
    with torch.inference_mode():
        state = model.init_state(3, generator=noise)
        for token in prompt.ids:
            ref, state = model.step(torch.full((3,), token, dtype=torch.long), state)
        assert (logits - ref).abs().max().item() < 1e-4
        nxt = torch.full((3,), tokenizer.vocab.bar_id, dtype=torch.long)
        a, _ = model.step(nxt, session.state)
        b, _ = model.step(nxt, state)
    assert (a - b).abs().max().item() < 1e-4
