"""Listening-style statistics: per 16-bar window (bar_windows.py) and prompt fidelity (continuation.py)."""

from __future__ import annotations

from pathlib import Path

import miditoolkit
import numpy as np
import pytest

from musicgen.evaluation.bar_windows import bar_window_statistics, within_range
from musicgen.evaluation.continuation import fidelity, note_arrays
from musicgen.generation.prompt import load_prompt
from musicgen.tokenizer import REMITokenizer

TPB = 480


def _midi(notes: list[tuple[int, int]]) -> miditoolkit.MidiFile:
    midi = miditoolkit.MidiFile(ticks_per_beat=TPB)
    inst = miditoolkit.Instrument(program=0)
    inst.notes = [miditoolkit.Note(80, pitch, start, start + TPB // 2) for start, pitch in notes]
    midi.instruments.append(inst)
    return midi


def _song(path: Path) -> miditoolkit.MidiFile:
    tokenizer = REMITokenizer()
    return tokenizer.decode(load_prompt(path, tokenizer, time_signature="index").ids)


def test_hand_computed_window() -> None:
    """32 bars of a C-major arpeggio on every beat, then one note far later (so both windows count)."""
    arpeggio = [60, 64, 67, 72]
    notes = [(beat * TPB, arpeggio[beat % 4]) for beat in range(32 * 4)] + [(40 * 4 * TPB, 60)]
    stats = bar_window_statistics(_midi(notes))
    assert len(stats) == 2
    first = stats[0]
    assert first.notes_per_bar == 4.0 and first.groove == 1.0 and first.scale_share == 1.0
    assert first.h4 == pytest.approx(1.5)  # pitch classes C (twice), E, G per bar: -(.5 log .5 + 2 x .25 log .25)
    assert first.max_same_onset_pitch == 1 and first.max_notes_per_onset == 1
    assert within_range(stats)["notes_per_bar"]["windows_outside"] == 2  # 4 notes per bar < 5


def test_collapsed_piece_is_caught() -> None:
    """The failure from the issue: hundreds of notes on one onset."""
    notes = [(beat * TPB, 60 + beat % 12) for beat in range(64)] + [(10 * TPB, 61)] * 300 + [(20 * 4 * TPB, 60)]
    stats = bar_window_statistics(_midi(notes))
    assert stats[0].max_same_onset_pitch == 300 and stats[0].notes_per_bar > 20
    check = within_range(stats)
    assert not check["all_inside"] and check["scale_share"]["windows_outside"] == 0


def test_pop909_test_songs_stay_inside_the_target_range(pop909_dir: Path) -> None:
    """The targets are POP909's own range: its test songs' windows must be inside it."""
    stats = []
    for song_id in (20, 40, 60, 80, 100):
        stats += bar_window_statistics(_song(pop909_dir / f"{song_id:03d}.mid"))
    assert len(stats) >= 10
    assert within_range(stats)["all_inside"]
    shares = [s.scale_share for s in stats]
    assert min(shares) > 0.8


def test_fidelity_zero_for_a_repeat_and_large_for_a_transposed_sparse_copy() -> None:
    bar = [(0, 60), (TPB, 64), (2 * TPB, 67), (3 * TPB, 64)]
    notes = [(start + b * 4 * TPB, pitch) for b in range(24) for start, pitch in bar]
    midi = _midi(notes)
    span = 8 * 4 * TPB
    prompt = note_arrays(midi, 0, span)
    same = fidelity(prompt, 8, note_arrays(midi, span, 3 * span), 16)
    assert same == {"key": 0.0, "register": 0.0, "density": 0.0, "groove": 0.0, "out_of_scale": 0.0}
    moved = _midi([(s, p + 6) for s, p in notes if (s // TPB) % 2 == 0])  # tritone up, half the notes
    far = fidelity(prompt, 8, note_arrays(moved, span, 3 * span), 16)
    assert far["register"] > 5 and far["density"] == pytest.approx(1.0) and far["key"] > 0.5 and far["groove"] > 0
    assert far["out_of_scale"] > 0.5  # C, E, G a tritone up: F#, A#, C#, none in the prompt's scale


def test_song_continues_closer_to_itself_than_to_another_song(pop909_dir: Path) -> None:
    """On real data the measure separates: a song's own next 16 bars vs another song's bars 8-24."""
    own, other = [], []
    for a, b in ((20, 40), (60, 80), (100, 120)):
        song, foreign = _song(pop909_dir / f"{a:03d}.mid"), _song(pop909_dir / f"{b:03d}.mid")
        span = 8 * 4 * song.ticks_per_beat
        prompt = note_arrays(song, 0, span)
        own.append(fidelity(prompt, 8, note_arrays(song, span, 3 * span), 16)["key"])
        other.append(fidelity(prompt, 8, note_arrays(foreign, span, 3 * span), 16)["key"])
    assert np.mean(own) < np.mean(other)
