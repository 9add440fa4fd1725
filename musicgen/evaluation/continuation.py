"""Does a continuation stay in its prompt's world? Compared with how the real song continues.

For a prompt (the song's first bars) and a continuation (generated, or the song's own next bars), four
distances, each 0 when the continuation matches the prompt (non-drum notes, bars of four beats):

* ``key``: total-variation distance between the two pitch-class histograms (0..1; half the L1 distance),
  i.e. the share of notes that would have to change pitch class;
* ``register``: |mean pitch difference| in semitones;
* ``density``: |log2| of the ratio of notes per bar (1 = twice or half as dense);
* ``groove``: 1 - the mean grooving similarity between the prompt's bars and the continuation's bars
  (16 cells per beat, as GS).
* ``out_of_scale``: share of the continuation's notes outside the diatonic scale that fits the prompt's notes
  best (0..1): the part of ``key`` that is wrong notes, where ``key`` also counts a different use of the
  same scale (more fifths, fewer thirds).

The song's own continuation is the yardstick: real music moves too (a chorus changes register), so a
model is "about as faithful as the song" when its distances are near the song's, not when they are 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .bar_windows import DIATONIC

__all__ = ["note_arrays", "fidelity", "FIDELITY_KEYS"]

FIDELITY_KEYS = ("key", "register", "density", "groove", "out_of_scale")


def note_arrays(midi: Any, lo_tick: int, hi_tick: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(onsets relative to lo_tick, pitches, ticks per beat) of non-drum notes starting in [lo, hi)."""
    starts, pitches = [], []
    for inst in midi.instruments:
        if inst.is_drum:
            continue
        for n in inst.notes:
            if lo_tick <= n.start < hi_tick:
                starts.append(n.start - lo_tick)
                pitches.append(n.pitch)
    return np.asarray(starts, dtype=np.int64), np.asarray(pitches, dtype=np.int64), int(midi.ticks_per_beat)


def _grid(starts: np.ndarray, tpb: int, bars: int) -> np.ndarray:
    bar_ticks, cells = 4 * tpb, 64
    grid = np.zeros((bars, cells))
    bar = np.minimum(starts // bar_ticks, bars - 1)
    grid[bar, np.minimum((starts % bar_ticks) * cells // bar_ticks, cells - 1)] = 1.0
    return grid


def fidelity(prompt: tuple[np.ndarray, np.ndarray, int], prompt_bars: int,
             continuation: tuple[np.ndarray, np.ndarray, int], continuation_bars: int) -> dict[str, float]:
    """The four distances of the module docstring (NaN where one side has no note)."""
    (ps, pp, tpb), (cs, cp, _) = prompt, continuation
    if len(pp) == 0 or len(cp) == 0:
        return dict.fromkeys(FIDELITY_KEYS, float("nan"))
    hp = np.bincount(pp % 12, minlength=12) / len(pp)
    hc = np.bincount(cp % 12, minlength=12) / len(cp)
    gp, gc = _grid(ps, tpb, prompt_bars), _grid(cs, tpb, continuation_bars)
    xor = gp.sum(1)[:, None] + gc.sum(1)[None, :] - 2 * gp @ gc.T
    return {
        "key": float(0.5 * np.abs(hp - hc).sum()),
        "register": float(abs(pp.mean() - cp.mean())),
        "density": float(abs(math.log2((len(cp) / continuation_bars) / (len(pp) / prompt_bars)))),
        "groove": float(np.mean(xor / gp.shape[1])),
        "out_of_scale": float(1.0 - hc[(DIATONIC + _best_root(hp)) % 12].sum()),
    }


def _best_root(hist: np.ndarray) -> int:
    """Root of the major scale (= its relative natural minor) holding most of a pitch-class histogram."""
    return int(np.argmax([hist[(DIATONIC + root) % 12].sum() for root in range(12)]))
