"""Rule-based chord recognition (as in the original REMI): one chord per half bar from a template match.

Chord tokens carry no notes; they are a hint for the model about harmony. Each segment's pitch classes are
weighted by how long they sound inside it; every (root, quality) template scores the weight inside the
template minus the weight outside, plus the root's own weight (so the bass-less inversions still prefer the
right root). A segment needs at least two template tones sounding to get a chord.
"""

from __future__ import annotations

import numpy as np

from .vocab import CHORD_QUALITIES

_QUALITIES = list(CHORD_QUALITIES.items())
# templates[c, pc] = +1 inside chord c, -1 outside, chord index c = root * n_qualities + quality.
_TEMPLATES = np.full((12 * len(_QUALITIES), 12), -1.0)
_MEMBERS = np.zeros((12 * len(_QUALITIES), 12), dtype=bool)
for _root in range(12):
    for _q, (_name, _offsets) in enumerate(_QUALITIES):
        for _off in _offsets:
            _TEMPLATES[_root * len(_QUALITIES) + _q, (_root + _off) % 12] = 1.0
            _MEMBERS[_root * len(_QUALITIES) + _q, (_root + _off) % 12] = True
# Small preference for simpler chords (triads before sevenths) when scores tie.
_SIZE_PENALTY = np.array([0.01 * len(offsets) for _ in range(12) for _, offsets in _QUALITIES])
_ROOT_OF = np.repeat(np.arange(12), len(_QUALITIES))


def chord_index(weights: np.ndarray) -> int | None:
    """Best chord index (root * n_qualities + quality) for a 12-bin pitch-class weight vector, or None."""
    if weights.sum() <= 0:
        return None
    scores = _TEMPLATES @ weights + weights[_ROOT_OF] - _SIZE_PENALTY
    present = (_MEMBERS & (weights > 0)[None, :]).sum(axis=1)
    scores[present < 2] = -np.inf
    best = int(np.argmax(scores))
    if not np.isfinite(scores[best]) or scores[best] <= 0:
        return None
    return best


def detect_chords(notes: list[tuple[int, int, int]], segments: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Chords for each segment [start, end) in grid steps from pitched notes (onset, duration, pitch).

    Returns (segment start, chord index) for the segments that have a chord.
    """
    if not notes or not segments:
        return []
    starts = np.asarray([s for s, _ in segments], dtype=np.int64)
    weights = np.zeros((len(segments), 12))
    for onset, duration, pitch in notes:
        end = onset + duration
        i = max(int(np.searchsorted(starts, onset, side="right")) - 1, 0)
        while i < len(segments) and segments[i][0] < end:
            s, e = segments[i]
            overlap = min(end, e) - max(onset, s)
            if overlap > 0:
                weights[i, pitch % 12] += overlap
            i += 1
    result = []
    for (start, _), w in zip(segments, weights):
        c = chord_index(w)
        if c is not None:
            result.append((start, c))
    return result


def transpose_chord(index: int, semitones: int) -> int:
    """Chord index after moving its root by `semitones` (quality unchanged)."""
    n = len(_QUALITIES)
    return ((index // n + semitones) % 12) * n + index % n
