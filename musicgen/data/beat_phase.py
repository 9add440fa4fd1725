"""Put a file's beats on the grid: find where its beats fall inside the MIDI file's own beat and shift it there.

Why: a MIDI file made by aligning a performance to a tempo map (POP909's files are) can have every beat a fixed
fraction of a beat away from the file's tick grid. In 87% of POP909's songs (787 of 909) the onsets sit on a
tight grid that is offset from the file's beats by some arbitrary part of a beat (song 060: onsets at 3/16, 7/16,
11/16 and 15/16 of each beat; song 020 at 5/16 and 13/16), each song with its own offset. Quantized to 16ths,
such a corpus has no common beat: every song's pulse lands on other cells, and a model trained on it learnt a
pulse on every other 16th that no song has (docs/form.md, round 3). Shifting each song so that its beats fall on
the grid gives the corpus back its common metre. The shift is less than a beat (back by at most half a beat
where no note would start before 0, else forward), so bar lines move by less than a beat.

It is a corpus option (`data.align_beats`), never applied to a user's prompt: a prompt is kept note for note.
A file whose onsets already cluster on the beat is left as it is.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import miditoolkit
import numpy as np

#: bump when a change here changes where a file's beats are put (it is part of every aligned song's cache key)
BEAT_PHASE_VERSION = 1
#: resolution of the search, in parts of a beat (a 32nd-note triplet's order of magnitude: finer than any grid
#: the tokenizer offers, coarse enough that a handful of onsets gives a peak)
BINS_PER_BEAT = 32
#: a file counts as on the grid when the onsets near its beats are at least this share of the busiest position
ON_GRID_SHARE = 0.5


def _windowed(hist: np.ndarray) -> np.ndarray:
    """Each position's count with its two neighbours (an onset a tick either side of a bin edge counts once)."""
    return hist + np.roll(hist, 1) + np.roll(hist, -1)


def beat_offset(midi: miditoolkit.MidiFile) -> int:
    """Where, in ticks after each of the file's beats (0 .. ticks_per_beat - 1), the music's beats fall; 0 when
    the file is already on its grid or has too few notes to tell.

    The busiest position within the beat is either the beat or the off-beat eighth; of the two, the one where
    the lower half of the notes (bass, left hand: what marks the beat in most music) starts more often wins.
    """
    tpb = int(midi.ticks_per_beat or 480)
    notes = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
    if len(notes) < 16 or tpb < BINS_PER_BEAT:
        return 0
    starts = np.array([int(n.start) for n in notes], dtype=np.int64)
    pitches = np.array([int(n.pitch) for n in notes])
    phase = (starts % tpb) / tpb
    bins = np.floor(phase * BINS_PER_BEAT + 0.5).astype(np.int64) % BINS_PER_BEAT
    mass = _windowed(np.bincount(bins, minlength=BINS_PER_BEAT).astype(float))
    if mass[0] >= ON_GRID_SHARE * mass.max():
        return 0
    peak = int(np.argmax(mass))
    other = (peak + BINS_PER_BEAT // 2) % BINS_PER_BEAT
    low = _windowed(np.bincount(bins[pitches < np.median(pitches)], minlength=BINS_PER_BEAT).astype(float))
    beat = other if low[other] > low[peak] else peak
    # The exact offset: the circular mean of the onsets in that bin and its neighbours.
    near = np.abs(((bins - beat + BINS_PER_BEAT // 2) % BINS_PER_BEAT) - BINS_PER_BEAT // 2) <= 1
    angle = math.atan2(np.sin(2 * np.pi * phase[near]).mean(), np.cos(2 * np.pi * phase[near]).mean())
    return int(round((angle / (2 * np.pi)) % 1.0 * tpb)) % tpb


def shift_ticks(midi: miditoolkit.MidiFile, offset: int) -> int:
    """Move everything in `midi` (in place) so that tick `offset` of each beat becomes the beat: back by `offset`
    when no note would start before 0, else forward by the rest of the beat. Returns the shift in ticks."""
    tpb = int(midi.ticks_per_beat or 480)
    if offset % tpb == 0:
        return 0
    first = min((int(n.start) for inst in midi.instruments for n in inst.notes), default=0)
    shift = -offset if offset <= tpb // 2 and first >= offset else tpb - offset

    def moved(tick: int) -> int:
        return max(int(tick) + shift, 0) if tick else 0  # an event at 0 (the opening tempo, metre) stays there

    for inst in midi.instruments:
        for note in inst.notes:
            note.start, note.end = int(note.start) + shift, int(note.end) + shift
        for event in (*inst.control_changes, *inst.pitch_bends):
            event.time = moved(event.time)
    for event in (*midi.tempo_changes, *midi.time_signature_changes, *midi.key_signature_changes,
                  *midi.markers, *midi.lyrics):
        event.time = moved(event.time)
    return shift


def corpus_aligns_beats(config: Mapping[str, Any] | None) -> bool:
    """Whether a checkpoint's stored run config trained on beat-aligned songs (`data.align_beats`): then its
    evaluations read test songs aligned too, as training saw them."""
    return bool(((config or {}).get("data") or {}).get("align_beats") or False)


def align_beats(midi: miditoolkit.MidiFile) -> int:
    """Shift `midi` in place so that its beats fall on the file's beat grid; returns the shift in ticks."""
    return shift_ticks(midi, beat_offset(midi))
