"""Does a filled gap join its neighbours as the real bars do, and are the kept bars untouched?

Measured on four-beat bars (:func:`.form.bar_sets`: 16 cells x 128 pitches, non-drum notes) between the gap's
bars and its neighbours (up to ``context`` bars on each side), for the filled piece and, as the yardstick, for
the original one:

* ``key``: half the L1 distance between their pitch-class distributions (0 = the same, 1 = disjoint);
* ``register``: the distance in semitones between their mean pitches;
* ``density``: |log| of the ratio of their notes per bar;
* ``groove``: 1 - the mean grooving similarity between a gap bar and a neighbour bar (16 cells).

A filled gap that keeps the key, register, density and rhythm of its surroundings as well as the real bars do
scores about the real bars' distances; a gap filled with music from elsewhere scores far above them.
"""

from __future__ import annotations

from typing import Any

import miditoolkit
import numpy as np

from .form import bar_sets, cross_groove

JOIN_KEYS = ("key", "register", "density", "groove")


def join_distances(bars: np.ndarray, lo: int, hi: int, context: int = 4) -> dict[str, float]:
    """Distances between four-beat bars ``lo..hi-1`` of ``bars`` (B, 16, 128) and the ``context`` bars on each
    side (see the module docstring); NaN where the gap or its neighbours hold no note."""
    gap = bars[lo:hi]
    around = np.concatenate([bars[max(0, lo - context):lo], bars[hi:hi + context]])
    g_notes, a_notes = gap.sum(), around.sum()
    if not g_notes or not a_notes:
        return {k: float("nan") for k in JOIN_KEYS}
    pitches = np.arange(128)

    def profile(count: np.ndarray) -> np.ndarray:
        pc = np.bincount(pitches % 12, weights=count, minlength=12)
        return pc / pc.sum()

    g_count, a_count = gap.sum(axis=(0, 1)), around.sum(axis=(0, 1))  # notes per pitch
    return {
        "key": float(0.5 * np.abs(profile(g_count) - profile(a_count)).sum()),
        "register": float(abs((g_count * pitches).sum() / g_count.sum() - (a_count * pitches).sum() / a_count.sum())),
        "density": float(abs(np.log((g_notes / len(gap)) / (a_notes / len(around))))),
        "groove": 1.0 - cross_groove(gap, around),
    }


def piece_join(midi: Any, lo: int, hi: int, context: int = 4) -> dict[str, float]:
    """:func:`join_distances` of four-beat bars ``lo..hi-1`` of a MIDI file."""
    return join_distances(bar_sets(midi, 0, hi + context), lo, hi, context)


def kept_notes(midi: miditoolkit.MidiFile, spans: list[tuple[int, int]], ticks_per_step: float) -> list[tuple]:
    """Every note outside the (start, end) tick spans, by the grid step its onset is quantized to, as
    (track name, program, drum, start, end, pitch, velocity), sorted: the notes infilling must keep."""
    from ..tokenizer.score import grid_step

    out = []
    for inst in midi.instruments:
        for n in inst.notes:
            tick = grid_step(n.start, ticks_per_step) * ticks_per_step
            if not any(lo <= tick < hi for lo, hi in spans):
                out.append((inst.name, inst.program, inst.is_drum, n.start, n.end, n.pitch, n.velocity))
    return sorted(out)


def kept_identical(original: miditoolkit.MidiFile, filled: miditoolkit.MidiFile, spans: list[tuple[int, int]],
                   ticks_per_step: float) -> bool:
    """Kept notes, tempo map, metre events and resolution of ``filled`` exactly those of ``original``."""
    return (original.ticks_per_beat == filled.ticks_per_beat
            and kept_notes(original, spans, ticks_per_step) == kept_notes(filled, spans, ticks_per_step)
            and [(t.time, t.tempo) for t in original.tempo_changes] == [(t.time, t.tempo) for t in filled.tempo_changes]
            and [(t.time, t.numerator, t.denominator) for t in original.time_signature_changes]
            == [(t.time, t.numerator, t.denominator) for t in filled.time_signature_changes])
