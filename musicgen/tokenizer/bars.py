"""Bar lines: the one calculator of where bars start, for grid steps (the quantizer) and MIDI ticks (piano
roll, music statistics). The grammar follows the same rule on token streams (`GrammarState.bar_start`).

Metre changes are (time, numerator, denominator), sorted by time; 4/4 holds before the first, and of several
changes at one time the last wins. A change that falls inside a bar is where the callers differ, on purpose:

* by default it takes effect at the next bar line (the tokenizer's rule: a TimeSig token can only follow a
  Bar, so `quantize` moves it there, and the piano roll draws the bars the tokens have);
* `split_at_changes=True` ends the running bar at the change (pretty_midi's downbeats): the music statistics
  (`musicgen.evaluation.metrics.bar_edges`) read arbitrary MIDI files and keep every bar inside one metre.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def bar_lines(changes: Sequence[tuple[float, int, int]], bar_length: Callable[[int, int], float], end: float,
              *, split_at_changes: bool = False) -> list[tuple[float, float, int, int]]:
    """Bars (start, stop, numerator, denominator) from 0 up to the first one that ends after `end` (so at least
    one); `bar_length(numerator, denominator)` is a bar's length in the caller's unit."""
    bars: list[tuple[float, float, int, int]] = []
    start, index, num, den = 0, 0, 4, 4
    while True:
        while index < len(changes) and changes[index][0] <= start:
            _, num, den = changes[index]
            index += 1
        stop = start + bar_length(num, den)
        if split_at_changes and index < len(changes) and changes[index][0] < stop:
            stop = changes[index][0]
        bars.append((start, stop, num, den))
        if stop > end:
            return bars
        start = stop


def midi_ticks_per_beat(midi) -> int:
    """The file's resolution (480 when it records none)."""
    tpb = int(getattr(midi, "ticks_per_beat", 480) or 480)
    return tpb if tpb > 0 else 480


def midi_bar_lines(midi, end_tick: float, *, split_at_changes: bool = False) -> np.ndarray:
    """Bar lines of a MIDI file in ticks (floats): 0, then every bar's end up to the first one after `end_tick`.

    Bar length = numerator * 4 / denominator beats under the file's time-signature map (4/4 before the first
    change, or for a nonsensical one); see the module docstring for a change inside a bar.
    """
    tpb = midi_ticks_per_beat(midi)
    changes = sorted(((max(0, int(ts.time)), int(ts.numerator), int(ts.denominator))
                      for ts in getattr(midi, "time_signature_changes", None) or []), key=lambda c: c[0])

    def length(num: int, den: int) -> float:
        return num * tpb * 4.0 / den if num > 0 and den > 0 else 4.0 * tpb

    bars = bar_lines(changes, length, end_tick, split_at_changes=split_at_changes)
    return np.asarray([0.0] + [float(stop) for _, stop, _, _ in bars], dtype=np.float64)
