"""No endless loops (musicgen/generation/loops.py): after a run of bars each copying the bar before, the next
bar's copying pitches are made `copy_penalty` times less likely, and nothing else."""

from __future__ import annotations

import math

import miditoolkit
import pytest
import torch

from musicgen.generation.loops import LoopBreaker, copies
from musicgen.generation.rules import StepContext
from musicgen.tokenizer import Phase, REMITokenizer, TokenType

CHORD = (60, 64, 67)


def _song(bars: list[tuple[int, ...]], beats: int = 4) -> miditoolkit.MidiFile:
    """One bar per entry: the entry's pitches struck together on every other beat (480 ticks a beat)."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = miditoolkit.Instrument(program=0)
    for index, pitches in enumerate(bars):
        for beat in range(0, beats, 2):
            start = (index * beats + beat) * 480
            piano.notes += [miditoolkit.Note(80, p, start, start + 400) for p in pitches]
    midi.instruments.append(piano)
    midi.time_signature_changes.append(miditoolkit.TimeSignature(beats, 4, 0))
    return midi


def _fed(tokenizer: REMITokenizer, rule: LoopBreaker, bars: list[tuple[int, ...]], prompt_bars: int = 0,
         beats: int = 4):
    """Feed the song's tokens (up to its last Bar's first Velocity) to row 0, its first ``prompt_bars`` bars as a
    prompt; returns that state."""
    ids = tokenizer.encode(_song(bars, beats))
    vocab = tokenizer.vocab
    last_bar = max(i for i, t in enumerate(ids) if int(vocab.types[t]) == TokenType.BAR)
    first_velocity = next(i for i in range(last_bar, len(ids)) if int(vocab.types[ids[i]]) == TokenType.VELOCITY)
    bar_lines = [i for i, t in enumerate(ids) if int(vocab.types[t]) == TokenType.BAR]
    prompt_end = bar_lines[prompt_bars] if prompt_bars < len(bar_lines) else len(ids)
    state = None
    for i, (_, token, state, _) in enumerate(tokenizer.grammar.walk(ids[:first_velocity + 1])):
        rule.observe(0, state, token, continuation=i >= max(prompt_end, 1))
    assert state.phase == Phase.VELOCITY  # the next token is the bar's first Pitch
    return state


@pytest.fixture(scope="module")
def tokenizer() -> REMITokenizer:
    return REMITokenizer()


def test_copies_is_the_loop_measure_of_the_form_report() -> None:
    bar = {(0, 60), (0, 64), (0, 67), (8, 60), (8, 64), (8, 67)}
    assert copies(bar, frozenset(bar)) and not copies(set(), frozenset())
    assert not copies(bar - {(8, 67)}, frozenset(bar))  # 5 of 6: 0.83 < 0.9


def test_after_the_run_the_copying_pitches_are_penalised_by_exactly_the_factor(tokenizer: REMITokenizer) -> None:
    vocab = tokenizer.vocab
    rule = LoopBreaker(vocab, max_copied_bars=2, copy_penalty=16.0, batch_size=1)
    state = _fed(tokenizer, rule, [CHORD] * 4)  # bars 2 and 3 copied the bar before; bar 4 is starting
    assert rule.rows[0].run == 2 and sorted(rule.copying_pitches(0, state)) == list(CHORD)
    logits = torch.zeros(1, len(vocab))
    out = rule.process(logits, StepContext([state], [False], temperature=0.5))
    changed = (out != logits).nonzero()[:, 1].tolist()
    assert sorted(changed) == sorted(vocab.id_of(TokenType.PITCH, p) for p in CHORD)
    assert torch.allclose(out[0, changed], torch.full((3,), -math.log(16.0) / 0.5))
    assert rule.report(0)["steps_biased"] == 1 and rule.report(0)["bars_steered"] == 1


@pytest.mark.parametrize("bars, why", [
    ([CHORD] * 3, "one copy in a row: below the bound"),
    ([CHORD, (62, 65, 69), CHORD, (62, 65, 69)], "alternating bars: a restatement two bars back, not a loop"),
])
def test_no_bias_before_the_bound_or_on_restatements(tokenizer: REMITokenizer, bars, why: str) -> None:
    rule = LoopBreaker(tokenizer.vocab, max_copied_bars=2, copy_penalty=16.0, batch_size=1)
    state = _fed(tokenizer, rule, bars)
    logits = torch.randn(1, len(tokenizer.vocab))
    assert torch.equal(rule.process(logits, StepContext([state], [False], 1.0)), logits), why


def test_a_prompt_that_loops_raises_the_bound_to_its_own_run(tokenizer: REMITokenizer) -> None:
    rule = LoopBreaker(tokenizer.vocab, max_copied_bars=2, copy_penalty=16.0, batch_size=2)
    state = _fed(tokenizer, rule, [CHORD] * 7, prompt_bars=6)  # a riff of six bars, the musician's, goes on
    rule.fork(0, 1)
    assert rule.rows[1].prompt_run == 5 and rule.bound(0) == rule.bound(1) == 10
    assert rule.rows[1].run == 5 and rule.copying_pitches(1, state) == []
    logits = torch.zeros(2, len(tokenizer.vocab))
    assert torch.equal(rule.process(logits, StepContext([state, state], [False, False], 1.0)), logits)
    rule.rows[0].run = 10  # as long again: now it is steered
    assert sorted(rule.copying_pitches(0, state)) == list(CHORD)


def test_settings_are_replaced_while_generating(tokenizer: REMITokenizer) -> None:
    rule = LoopBreaker(tokenizer.vocab, max_copied_bars=2, copy_penalty=16.0, batch_size=1)
    state = _fed(tokenizer, rule, [CHORD] * 4)
    rule.replace(max_copied_bars=0)
    assert rule.copying_pitches(0, state) == []
    with pytest.raises(ValueError, match="no setting"):
        rule.replace(window=3)


def test_in_two_four_a_loop_of_two_bars_is_a_loop_of_four_beats(tokenizer: REMITokenizer) -> None:
    """What a 2/4 piece loops (a figure of two bars) is one span of four beats, as the form measures lay it out."""
    rule = LoopBreaker(tokenizer.vocab, max_copied_bars=2, copy_penalty=16.0, batch_size=1)
    figure = [CHORD, (62, 65, 69)]
    state = _fed(tokenizer, rule, figure * 4 + [CHORD], beats=2)
    assert rule.rows[0].span_bars == 2 and rule.rows[0].run >= 2
    assert sorted(rule.copying_pitches(0, state)) == list(CHORD)
