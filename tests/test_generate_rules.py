"""The decode-time rule interface (musicgen/generation/rules.py): the session is a loop over an ordered list."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from musicgen.generation import GenerationSession, SamplingConfig, StopConfig, unconditional_prompt
from musicgen.generation.guards import GuardConfig, MusicGuards
from musicgen.generation.rules import DEFAULT_RULES, DecodeRule, RuleSpec, build_rules
from musicgen.generation.tonal import TonalMemory
from musicgen.tokenizer import REMITokenizer, TokenType


class UniformModel:
    """Every token equally likely, always: what a rule does is all that shapes the piece."""

    def __init__(self, vocab_size: int) -> None:
        self.logits = torch.zeros(1, vocab_size)

    def prefill(self, ids: torch.Tensor, generator=None):
        return self.logits.expand(ids.shape[0], ids.shape[1], -1).clone(), None

    def step(self, tokens: torch.Tensor, state):
        return self.logits.expand(tokens.shape[0], -1).clone(), state


@dataclass(frozen=True)
class CeilingConfig:
    """The new rule's own settings group."""

    ceiling: int = 127


class NoPitchAbove(DecodeRule):
    """A new rule written outside the package: pitches above ``ceiling`` are masked; counts what it saw."""

    report_key = "no_pitch_above"

    def __init__(self, vocab, batch: int, ceiling: int) -> None:
        self.pitches = vocab.ids_of_type(TokenType.PITCH)
        self.values = np.asarray(vocab.values)
        self.ceiling = ceiling
        self.seen = [0] * batch

    def observe(self, row, state, token, continuation) -> None:
        if continuation and token in self.pitches:
            self.seen[row] += 1

    def restrict(self, row, state, allowed, probs) -> None:
        high = np.zeros_like(allowed)
        high[self.pitches.start:self.pitches.stop] = self.values[self.pitches.start:self.pitches.stop] > self.ceiling
        if (allowed & ~high).any():
            allowed &= ~high

    def replace(self, **settings) -> None:
        self.ceiling = int(settings["ceiling"])

    def report(self, row: int) -> dict:
        return {"ceiling": self.ceiling, "pitches": self.seen[row]}


#: the new rule as the session knows it: its settings group and how it is built from it
CEILING = RuleSpec("no_pitch_above", "ceiling", lambda vocab, batch, config: NoPitchAbove(vocab, batch, config.ceiling))


@pytest.fixture(scope="module")
def tokenizer() -> REMITokenizer:
    return REMITokenizer()


def _pitches(tokenizer: REMITokenizer, ids: list[int]) -> list[int]:
    vocab = tokenizer.vocab
    return [int(vocab.values[t]) for t in ids if int(vocab.types[t]) == TokenType.PITCH]


def test_a_new_rule_is_one_class_one_spec_and_its_settings_group(tokenizer: REMITokenizer) -> None:
    sampling, guards = SamplingConfig(), GuardConfig()
    session = GenerationSession(UniformModel(len(tokenizer.vocab)), tokenizer, sampling,
                                StopConfig(tokens=300, allow_eos=False), seed=1, guards=guards,
                                rules=DEFAULT_RULES + (CEILING,), rule_settings={"ceiling": CeilingConfig(60)})
    results = session.run(unconditional_prompt(tokenizer), 2, progress=False)
    for result in results:
        pitches = _pitches(tokenizer, result.ids)
        assert pitches and max(pitches) <= 60  # uniform logits would reach 127 within a few notes
    report = session.reports(0)
    assert report["no_pitch_above"] == {"ceiling": 60, "pitches": len(_pitches(tokenizer, results[0].ids))}
    assert set(report) >= {"guards", "controls", "tonal_memory"}


def test_settings_are_replaced_between_two_steps_and_the_state_is_kept(tokenizer: REMITokenizer) -> None:
    sampling, guards = SamplingConfig(), GuardConfig()
    session = GenerationSession(UniformModel(len(tokenizer.vocab)), tokenizer, sampling,
                                StopConfig(tokens=2000, allow_eos=False), seed=2, guards=guards,
                                rules=DEFAULT_RULES + (CEILING,), rule_settings={"ceiling": CeilingConfig(50)})
    logits, tracks, _ = session.feed_prompt(unconditional_prompt(tokenizer), 1)
    for _ in range(300):
        logits = session.step(logits, tracks)
    first = len(tracks[0].tokens)
    session.replace_settings(NoPitchAbove, ceiling=90)
    session.replace_settings(TonalMemory, strength=0.0)
    session.replace_settings(MusicGuards, max_notes_per_onset=3)
    for _ in range(300):
        logits = session.step(logits, tracks)
    before, after = _pitches(tokenizer, tracks[0].tokens[:first]), _pitches(tokenizer, tracks[0].tokens[first:])
    assert max(before) <= 50 and max(after) > 50 and max(after) <= 90
    assert session.rule(NoPitchAbove).seen[0] == len(before) + len(after)  # its bookkeeping went on
    assert session.rule(MusicGuards).config.max_notes_per_onset == 3
    with pytest.raises(ValueError, match="density_window_bars"):
        session.replace_settings(MusicGuards, density_window_bars=4)  # shapes the bookkeeping: fixed
    with pytest.raises(ValueError, match="cannot change"):
        session.replace_settings(TonalMemory, half_life=3)


def test_prompt_is_read_once_and_forked_to_every_row(tokenizer: REMITokenizer) -> None:
    vocab = tokenizer.vocab
    span = vocab.ids_of_type(TokenType.PITCH)
    memory = TonalMemory(3, span, np.asarray(vocab.values[span.start:span.stop]), 0.75, 256)
    for pitch in (62, 66, 69):
        memory.add_note(0, vocab.id_of(TokenType.PITCH, pitch))
    for row in (1, 2):
        memory.fork(0, row)
    assert np.array_equal(memory.counts[1], memory.counts[0]) and np.array_equal(memory.counts[2], memory.counts[0])
    memory.observe(1, None, vocab.id_of(TokenType.PITCH, 70), continuation=True)
    assert np.array_equal(memory.counts[1], memory.counts[0])  # the continuation's notes are not remembered
    guards = MusicGuards(vocab, GuardConfig(), 2)
    guards.rows[0].notes_in_bar = 5
    guards.fork(0, 1)
    guards.rows[1].notes_in_bar += 1
    assert guards.rows[0].notes_in_bar == 5  # a copy, not a shared row


def test_rules_are_built_in_order_and_only_when_their_settings_switch_them_on(tokenizer: REMITokenizer) -> None:
    from musicgen.generation.controls import ControlConfig, Controls
    from musicgen.generation.loops import LoopBreaker
    from musicgen.generation.sampling import RepetitionPenalty

    vocab = tokenizer.vocab
    settings = {"sampling": SamplingConfig(), "guards": GuardConfig(), "controls": None}
    names = [type(rule) for rule in build_rules(vocab, 2, DEFAULT_RULES, settings)]
    assert names == [TonalMemory, MusicGuards, LoopBreaker, RepetitionPenalty]  # no control set: no Controls rule
    kept = build_rules(vocab, 2, DEFAULT_RULES, settings, keep=("controls",))
    assert [type(rule) for rule in kept] == [TonalMemory, Controls, MusicGuards, LoopBreaker, RepetitionPenalty]
    unlooped = build_rules(vocab, 2, DEFAULT_RULES, {**settings, "guards": GuardConfig(max_copied_bars=0)})
    assert LoopBreaker not in [type(rule) for rule in unlooped]
    charted = build_rules(vocab, 2, DEFAULT_RULES, {**settings, "controls": ControlConfig(chords="C G")})
    assert isinstance(charted[1], Controls)
    off = build_rules(vocab, 2, DEFAULT_RULES, {**settings, "guards": GuardConfig(enabled=False)})
    assert {MusicGuards, LoopBreaker}.isdisjoint(type(rule) for rule in off)
    with pytest.raises(KeyError, match="ceiling"):  # a spec whose settings group the session was not given
        build_rules(vocab, 1, DEFAULT_RULES + (CEILING,), settings)
    with pytest.raises(ValueError, match="no rule named"):
        build_rules(vocab, 1, DEFAULT_RULES, settings, keep=("chords",))
    with pytest.raises(ValueError, match="own groups"):
        GenerationSession(UniformModel(len(vocab)), tokenizer, SamplingConfig(), StopConfig(tokens=10), 0,
                          rule_settings={"sampling": SamplingConfig(temperature=2.0)})
