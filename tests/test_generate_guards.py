"""Musical guards of decoding (musicgen/generation/guards.py): models that want to loop or stay silent can't."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from musicgen.config import UserError
from musicgen.generation import GenerationSession, SamplingConfig, StopConfig, unconditional_prompt
from musicgen.generation.guards import GuardConfig, MusicGuards
from musicgen.tokenizer import REMITokenizer, TokenType

from support import FixedPreferenceModel

OFF = GuardConfig(no_repeated_pitch=False, max_notes_per_onset=0, max_empty_bars=0, min_notes_per_bar=0,
                  register_window_notes=0, min_bars=0)


@pytest.fixture(scope="module")
def tokenizer() -> REMITokenizer:
    return REMITokenizer()


def _onsets(tokenizer: REMITokenizer, ids: list[int]) -> Counter:
    """(instrument, onset tick, pitch) -> how many notes start there, from the decoded MIDI."""
    midi = tokenizer.decode(ids)
    return Counter((i, n.start, n.pitch) for i, inst in enumerate(midi.instruments) for n in inst.notes)


def _looping_model(tokenizer: REMITokenizer) -> FixedPreferenceModel:
    """Wants another note (Velocity) after every note, always pitch 60, and never to move on."""
    vocab = tokenizer.vocab
    logits = torch.zeros(1, len(vocab))
    logits[0, list(vocab.ids_of_type(TokenType.VELOCITY))] = 8.0
    logits[0, vocab.id_of(TokenType.PITCH, 60)] = 12.0
    logits[0, list(vocab.ids_of_type(TokenType.POSITION))] = -4.0
    logits[0, vocab.bar_id] = -4.0
    return FixedPreferenceModel(logits)


def _run(model, tokenizer, guards, tokens=600, seed=0, temperature=1.0):
    session = GenerationSession(model, tokenizer, SamplingConfig(temperature=temperature),
                                StopConfig(tokens=tokens, allow_eos=False), seed, guards=guards)
    return session.run(unconditional_prompt(tokenizer), 2, progress=False)


def test_looping_model_loops_without_guards(tokenizer: REMITokenizer) -> None:
    """The failure the guards exist for: the same (onset, pitch) over and over."""
    for result in _run(_looping_model(tokenizer), tokenizer, OFF):
        assert max(_onsets(tokenizer, result.ids).values()) > 20
        assert result.guards["acted"] == dict.fromkeys(result.guards["acted"], 0)


def test_guards_forbid_repeated_pitch_and_bound_notes_per_onset(tokenizer: REMITokenizer) -> None:
    for result in _run(_looping_model(tokenizer), tokenizer, GuardConfig(max_notes_per_onset=6)):
        counts = _onsets(tokenizer, result.ids)
        assert counts and max(counts.values()) == 1  # never the same pitch twice at one onset
        per_onset = Counter((inst, start) for inst, start, _ in counts.elements())
        assert max(per_onset.values()) <= 6 and len(per_onset) > 10  # the piece moves on
        assert tokenizer.decode_with_report(result.ids)[1].skipped == 0
        acted, removed = result.guards["acted"], result.guards["probability_removed"]
        assert acted["repeated_pitch"] > 0 and acted["onset_full"] > 0
        assert removed["repeated_pitch"] > acted["repeated_pitch"] * 0.5  # the model wanted pitch 60 each time
        assert result.guards["max_notes_per_onset"] == 6


def test_silent_model_is_made_to_play(tokenizer: REMITokenizer) -> None:
    """Greedy decoding of a model that prefers Bar (or EOS) wrote a MIDI with 0 notes; now it cannot."""
    vocab = tokenizer.vocab
    logits = torch.zeros(1, len(vocab))
    logits[0, vocab.bar_id] = 10.0
    logits[0, vocab.eos_id] = 9.0
    logits[0, list(vocab.ids_of_type(TokenType.CHORD))] = 5.0
    model = FixedPreferenceModel(logits)
    silent = GenerationSession(model, tokenizer, SamplingConfig(temperature=0), StopConfig(tokens=300), 0,
                               guards=OFF).run(unconditional_prompt(tokenizer), 1, progress=False)[0]
    assert tokenizer.decode_with_report(silent.ids)[1].notes == 0
    session = GenerationSession(model, tokenizer, SamplingConfig(temperature=0), StopConfig(tokens=300), 0)
    result = session.run(unconditional_prompt(tokenizer), 1, progress=False)[0]
    assert result.stop_reason in ("eos", "tokens")
    assert tokenizer.decode_with_report(result.ids)[1].notes > 0
    assert result.guards["acted"]["empty_bars"] > 0 or result.guards["acted"]["empty_piece"] > 0


def _sparse_model(tokenizer: REMITokenizer) -> FixedPreferenceModel:
    """Wants to end the bar after (almost) every event: under half a note per bar, a piece thinning out."""
    vocab = tokenizer.vocab
    logits = torch.zeros(1, len(vocab))
    logits[0, vocab.bar_id] = 4.0
    logits[0, list(vocab.ids_of_type(TokenType.POSITION))] = -1.0
    for kind in (TokenType.CHORD, TokenType.TEMPO, TokenType.PROGRAM):
        logits[0, list(vocab.ids_of_type(kind))] = -9.0
    return FixedPreferenceModel(logits)


def _notes_per_bar(tokenizer: REMITokenizer, result) -> float:
    return sum(len(i.notes) for i in tokenizer.decode(result.ids).instruments) / max(result.n_bars, 1)


def test_thinning_piece_is_nudged_denser(tokenizer: REMITokenizer) -> None:
    """The soft rule: a model that thins out gets several times the notes per bar, and the .json says how often."""
    model = _sparse_model(tokenizer)
    plain = [_notes_per_bar(tokenizer, r) for r in _run(model, tokenizer, GuardConfig(min_notes_per_bar=0), 1500)]
    guarded = _run(model, tokenizer, GuardConfig(), 1500)
    assert max(plain) < 0.6
    for result in guarded:
        assert _notes_per_bar(tokenizer, result) > 2.5 * max(plain)
        assert result.guards["acted"]["sparse"] > 100
        assert result.guards["probability_removed"]["sparse"] > 10  # probability moved to starting notes
        assert result.guards["min_notes_per_bar"] == 6.0


def test_dense_piece_never_triggers_the_sparse_rule(tokenizer: REMITokenizer) -> None:
    for result in _run(_looping_model(tokenizer), tokenizer, GuardConfig()):
        assert result.guards["acted"]["sparse"] == 0


def test_cramming_piece_is_thinned(tokenizer: REMITokenizer) -> None:
    """The mirror image: a model that piles notes into every bar gets fewer once past the ceiling."""
    vocab = tokenizer.vocab
    logits = torch.zeros(1, len(vocab))
    logits[0, list(vocab.ids_of_type(TokenType.VELOCITY))] = 1.0
    logits[0, vocab.bar_id] = -2.0
    for kind in (TokenType.CHORD, TokenType.TEMPO, TokenType.PROGRAM, TokenType.TIME_SIG):
        logits[0, list(vocab.ids_of_type(kind))] = -9.0
    logits[0, vocab.time_signature_id(4, 4)] = 0.0  # bars of four beats: notes per bar = per four beats
    model = FixedPreferenceModel(logits)
    plain = [_notes_per_bar(tokenizer, r) for r in _run(model, tokenizer, GuardConfig(max_notes_per_bar=0), 3000)]
    held = _run(model, tokenizer, GuardConfig(max_notes_per_bar=20), 3000)
    assert min(plain) > 40
    for result in held:
        assert _notes_per_bar(tokenizer, result) < min(plain) - 4  # the model is set on cramming: a nudge, not a cap
        assert result.guards["acted"]["dense"] > 50 and result.guards["acted"]["sparse"] == 0


@pytest.mark.parametrize("notes_per_bar, expected", [(4, 0), (2, -1)])
def test_density_is_counted_per_four_beats_whatever_the_metre(tokenizer: REMITokenizer, tmp_path, notes_per_bar: int,
                                                              expected: int) -> None:
    """16 bars of 2/4 with 4 notes each are 8 notes per four beats: not sparse (floor 6), though 4 per bar;
    with 2 notes per 2/4 bar (4 per four beats) they are."""
    import miditoolkit

    from musicgen.generation.prompt import load_prompt

    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.time_signature_changes = [miditoolkit.TimeSignature(2, 4, 0)]
    inst = miditoolkit.Instrument(program=0)
    step = 2 * 480 // notes_per_bar
    inst.notes = [miditoolkit.Note(80, 60 + (i % 5), i * step, i * step + step // 2) for i in range(16 * notes_per_bar)]
    midi.instruments.append(inst)
    path = tmp_path / "two_four.mid"
    midi.dump(str(path))
    ids = load_prompt(path, tokenizer).ids + [tokenizer.vocab.bar_id]
    guards = MusicGuards(tokenizer.vocab, GuardConfig(), 1)
    for step_ in tokenizer.grammar.walk(ids):
        guards.observe(0, step_.state, step_.token, continuation=True)  # as if generated: no prompt to adapt to
    assert guards.density_excursion(0) == expected


def test_sparse_prompt_lowers_the_floor(tokenizer: REMITokenizer) -> None:
    """A prompt of 1 note per bar may be continued at that density: the floor drops to half the prompt's."""
    sparse_piece = _run(_sparse_model(tokenizer), tokenizer, OFF, 400)[0]
    ids = sparse_piece.ids[:-1]  # drop EOS: a prompt
    guards = MusicGuards(tokenizer.vocab, GuardConfig(density_window_bars=8), 1)
    for step in tokenizer.grammar.walk(ids):
        guards.observe(0, step.state, step.token, continuation=False)
    row = guards.rows[0]
    assert row.prompt_bars >= 8 and row.prompt_notes < 0.6 * row.prompt_bars
    assert guards.sparse_floor(0) == pytest.approx(0.5 * row.prompt_notes * 16 / row.prompt_steps)  # per 4 beats
    bars, notes = row.prompt_bars, row.prompt_notes
    state = list(tokenizer.grammar.walk(ids + [tokenizer.vocab.bar_id]))[-1].state
    guards.observe(0, state, tokenizer.vocab.bar_id, continuation=True)  # the continuation's first Bar ends the
    assert row.prompt_bars == bars + 1  # prompt's last bar: that bar is the prompt's
    assert row.prompt_notes >= notes
    fresh = MusicGuards(tokenizer.vocab, GuardConfig(), 1)
    assert fresh.sparse_floor(0) == 6.0 and not fresh.is_sparse(0)  # no window of bars yet


def _climbing_model(tokenizer: REMITokenizer) -> FixedPreferenceModel:
    """Prefers the top of the keyboard: odds x e per octave up (the drift the register rule works against)."""
    vocab = tokenizer.vocab
    logits = torch.zeros(1, len(vocab))
    span = vocab.ids_of_type(TokenType.PITCH)
    logits[0, span.start:span.stop] = torch.as_tensor(vocab.values[span.start:span.stop], dtype=torch.float32) / 12
    for kind in (TokenType.CHORD, TokenType.TEMPO, TokenType.PROGRAM):
        logits[0, list(vocab.ids_of_type(kind))] = -9.0
    return FixedPreferenceModel(logits)


def _mean_pitch(tokenizer: REMITokenizer, result) -> float:
    vocab = tokenizer.vocab
    return float(np.mean([vocab.values[t] for t in result.ids[result.prompt_length:]
                          if vocab.types[t] == TokenType.PITCH]))


def test_piece_climbing_off_the_keyboard_is_brought_back(tokenizer: REMITokenizer) -> None:
    model = _climbing_model(tokenizer)
    free = _run(model, tokenizer, GuardConfig(register_window_notes=0), 1500)
    held = _run(model, tokenizer, GuardConfig(), 1500)
    top = min(_mean_pitch(tokenizer, r) for r in free)
    assert top > 105
    for result in held:
        assert _mean_pitch(tokenizer, result) < top - 10
        assert result.guards["acted"]["register"] > 50
        assert result.guards["probability_removed"]["register"] > 10  # probability moved away from the top
    for result in _run(_sparse_model(tokenizer), tokenizer, GuardConfig(), 600):  # pitches uniform: mean ~64
        assert result.guards["acted"]["register"] == 0


def test_high_prompt_moves_the_register_bound(tokenizer: REMITokenizer) -> None:
    guards = MusicGuards(tokenizer.vocab, GuardConfig(), 1)
    assert guards.register_bounds(0) == (46.0, 78.0)
    high = [tokenizer.vocab.bos_id]
    piece = _run(_climbing_model(tokenizer), tokenizer, OFF, 400)[0]
    high = piece.ids[:-1]
    for step in tokenizer.grammar.walk(high):
        guards.observe(0, step.state, step.token, continuation=False)
    row = guards.rows[0]
    mean = row.prompt_pitch_sum / row.prompt_pitch_notes
    assert mean > 90 and guards.register_bounds(0) == (46.0, pytest.approx(mean + 6))
    assert guards.register_excursion(0) is None  # the prompt's own register is not an excursion


def test_piece_does_not_end_before_min_bars(tokenizer: REMITokenizer) -> None:
    """A model that would end the piece at its first chance plays at least `min_bars` bars."""
    vocab = tokenizer.vocab
    logits = torch.zeros(1, len(vocab))
    logits[0, vocab.eos_id] = 12.0
    model = FixedPreferenceModel(logits)
    stub = GenerationSession(model, tokenizer, SamplingConfig(temperature=0), StopConfig(tokens=2000), 0,
                             guards=GuardConfig(min_bars=0)).run(unconditional_prompt(tokenizer), 1, progress=False)[0]
    assert stub.stop_reason == "eos" and stub.n_bars < 8  # as soon as it has a note
    full = GenerationSession(model, tokenizer, SamplingConfig(temperature=0), StopConfig(tokens=2000), 0,
                             guards=GuardConfig(min_bars=8)).run(unconditional_prompt(tokenizer), 1, progress=False)[0]
    assert full.stop_reason == "eos" and full.n_bars == 8  # it ends at the first chance once 8 bars have begun
    assert full.guards["acted"]["too_short"] > 0 and full.guards["min_bars"] == 8


@pytest.mark.parametrize("kwargs", [{"max_notes_per_onset": -1}, {"max_empty_bars": 1.5}, {"min_bars": -2},
                                    {"min_notes_per_bar": -1},
                                    {"density_window_bars": 0}, {"max_mean_pitch": 40.0}, {"register_window_notes": -1},
                                    {"min_mean_pitch": 200}, {"min_notes_per_bar": 50},
                                    {"max_notes_per_onset": True}])
def test_bad_guard_options(kwargs: dict) -> None:
    with pytest.raises(UserError):
        GuardConfig(**kwargs)
