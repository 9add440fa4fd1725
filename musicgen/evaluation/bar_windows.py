"""Statistics of a piece per window of four-beat bars: does a long piece stay music all the way?

A 20,000-token piece can look fine on average and still collapse for a hundred bars (the shipped model
before attention decay wrote 2,233 notes into one bar). So the piece is cut into consecutive windows of
``bars`` bars of four beats (16 by default: 64 beats, whatever the metre tokens say, so every model and
song is cut the same way) and each window gets, over its non-drum notes:

* ``notes_per_bar``: notes starting in the window / ``bars``;
* ``h4``: pitch-class entropy (bits) of 4-bar sub-windows sliding by one bar, averaged (as H4 in
  :mod:`.metrics`);
* ``groove``: grooving-pattern similarity of the window's bars (all pairs, 16 cells per beat, as GS);
* ``scale_share``: share of notes inside the window's best-fitting diatonic scale (the best of the 12
  major scales, which are also the 12 natural minors). Tonal music scores high (POP909's worst test
  window: 81%); uniformly random pitches score about 58%;
* ``max_same_onset_pitch`` / ``max_notes_per_onset``: loop detectors (1 and a handful in real music).

Only windows that end before the piece's last onset count (a last, partial window would be mostly silence).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["WindowStats", "bar_window_statistics", "within_range", "DIATONIC", "TARGET_RANGE"]

DIATONIC = np.array([0, 2, 4, 5, 7, 9, 11])
#: bounds for every 16-bar window: POP909's range (non-drum notes); a pitch started more than 3 times at one
#: onset is a note loop (POP909's test songs reach 3 where melody, bridge and piano double a note)
TARGET_RANGE = {"notes_per_bar": (5.0, 45.0), "h4": (None, 3.1), "groove": (0.50, None), "scale_share": (0.80, None),
                "max_same_onset_pitch": (None, 3)}


@dataclass
class WindowStats:
    index: int
    notes_per_bar: float
    h4: float
    groove: float
    scale_share: float
    max_same_onset_pitch: int
    max_notes_per_onset: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _entropy(counts: np.ndarray) -> float:
    total = counts.sum()
    if total <= 0:
        return float("nan")
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


def _scale_share(pcs: np.ndarray) -> float:
    if len(pcs) == 0:
        return float("nan")
    hist = np.bincount(pcs, minlength=12)
    return max(hist[(DIATONIC + root) % 12].sum() for root in range(12)) / len(pcs)


def _groove(bar_of: np.ndarray, cell: np.ndarray, bars: int, cells: int) -> float:
    grid = np.zeros((bars, cells))
    grid[bar_of, cell] = 1.0
    ones = grid.sum(1)
    xor = ones[:, None] + ones[None, :] - 2 * grid @ grid.T
    iu = np.triu_indices(bars, k=1)
    return float(np.mean(1.0 - xor[iu] / cells))


def bar_window_statistics(midi: Any, bars: int = 16) -> list[WindowStats]:
    """Per-window statistics of ``midi`` (miditoolkit.MidiFile) over windows of ``bars`` four-beat bars."""
    tpb = int(getattr(midi, "ticks_per_beat", 480) or 480)
    starts, pitches = [], []
    for inst in midi.instruments:
        if inst.is_drum:
            continue
        for note in inst.notes:
            starts.append(int(note.start))
            pitches.append(int(note.pitch))
    if not starts:
        return []
    start = np.asarray(starts, dtype=np.int64)
    pitch = np.asarray(pitches, dtype=np.int64)
    bar_ticks, cells = 4 * tpb, 64
    window_ticks = bars * bar_ticks
    out = []
    for w in range(int(start.max()) // window_ticks):
        lo = w * window_ticks
        keep = (start >= lo) & (start < lo + window_ticks)
        s, p = start[keep] - lo, pitch[keep]
        bar_of = s // bar_ticks
        counts = np.zeros((bars, 12))
        np.add.at(counts, (bar_of, p % 12), 1.0)
        sub = [_entropy(counts[b:b + 4].sum(0)) for b in range(bars - 3)]
        sub = [h for h in sub if h == h]
        cell = np.minimum(((s % bar_ticks) * cells) // bar_ticks, cells - 1)
        _, same = np.unique(np.stack([s, p]), axis=1, return_counts=True) if len(s) else (None, np.zeros(1))
        _, per_onset = np.unique(s, return_counts=True) if len(s) else (None, np.zeros(1))
        out.append(WindowStats(w, len(s) / bars, float(np.mean(sub)) if sub else float("nan"),
                               _groove(bar_of, cell, bars, cells), _scale_share(p % 12),
                               int(same.max()), int(per_onset.max())))
    return out


def within_range(stats: list[WindowStats], target: dict[str, tuple[float | None, float | None]] | None = None
                 ) -> dict[str, Any]:
    """Which windows leave the target range (default :data:`TARGET_RANGE`), per statistic."""
    target = target or TARGET_RANGE
    report: dict[str, Any] = {}
    for key, (lo, hi) in target.items():
        values = [getattr(s, key) for s in stats]
        bad = [s.index for s, v in zip(stats, values) if v != v or (lo is not None and v < lo) or (hi is not None and v > hi)]
        finite = [v for v in values if v == v]
        report[key] = {"min": round(min(finite), 4) if finite else None, "max": round(max(finite), 4) if finite else None,
                       "windows_outside": len(bad)}
    report["all_inside"] = bool(stats) and all(r["windows_outside"] == 0 for r in report.values() if isinstance(r, dict))
    return report
