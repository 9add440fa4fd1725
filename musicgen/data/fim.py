"""Fill-in-the-middle: the one layout in which the model reads the bars after a gap before it writes the gap.

    [BOS] [bars after the gap] [BOS] [bars before the gap] [the gap's bars]

Why this layout: the model writes forward only, so the future must come first; the second BOS tells it where the
look-ahead ends and the piece resumes from its earlier bars (without it, "after" and "before" read as one piece
played in the wrong order, and a model trained only on plain crops never learns to use the bars after a gap:
docs/compose.md measured 1.6% on the real middle bars). A small share of training crops (`train.fim_rate`) is
arranged this way (`fim_crop`) and the rest stay plain, so continuation is still what most crops teach;
`musicgen.generation.infill` builds its contexts with `fim_context`, so training and generation agree token for
token. The after bars state their metre after their first Bar (as a piece's first bar does), the bars before
follow in that metre.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..tokenizer import TokenType

#: beats of music after a gap that the model reads first (8 four-beat bars)
LOOKAHEAD_BEATS = 32
#: the gap lengths training asks for, in four-beat bars (1..MAX_GAP_BEATS / 4)
MAX_GAP_BEATS = 32


def fim_context(bos_id: int, after: Sequence[int], before: Sequence[int], separated: bool) -> list[int]:
    """What the model reads before it writes a gap: BOS, the bars after the gap, BOS (``separated``: the model
    was trained with fill-in-the-middle crops), the bars before it. Without bars after, a plain prefix."""
    middle = [bos_id] if separated and after else []
    return [bos_id, *after, *middle, *before]


def _bars(ids: np.ndarray, bar_id: int) -> list[np.ndarray]:
    cuts = np.flatnonzero(ids == bar_id)
    return [ids[a:b] for a, b in zip(cuts, [*cuts[1:], len(ids)])]


def fim_crop(ids: np.ndarray, vocab, metre_in_effect: int, rng: np.random.Generator) -> np.ndarray | None:
    """A plain training crop (from a Bar, or BOS at a song's start) rearranged as [BOS] after [BOS] before gap,
    or None when it cannot be (fewer than three whole bars, or a metre change inside it). ``metre_in_effect``: the
    TimeSig id in effect where the crop starts (-1: 4/4). The gap is 1-8 four-beat bars at a random place with at
    least one bar before it; the after part is the next `LOOKAHEAD_BEATS` beats of whole bars of the crop."""
    span = vocab.ranges[TokenType.TIME_SIG]
    body = ids[1:] if len(ids) and ids[0] == vocab.bos_id else ids
    if len(body) < 2 or body[0] != vocab.bar_id:
        return None
    metre = int(metre_in_effect)
    if span.start <= body[1] < span.stop:
        metre, body = int(body[1]), np.concatenate([body[:1], body[2:]])
    if ((body >= span.start) & (body < span.stop)).any():
        return None
    bars = _bars(body, vocab.bar_id)[:-1]  # the last bar may be cut by the crop's end
    if len(bars) < 3:
        return None
    num, den = vocab.time_signatures[metre - span.start] if metre >= 0 else (4, 4)
    beats = num * 4 / den
    gap = max(1, round(float(rng.integers(1, MAX_GAP_BEATS // 4 + 1)) * 4 / beats))
    gap = min(gap, len(bars) - 2)
    first = int(rng.integers(1, len(bars) - gap))
    end = first + gap
    after = bars[end:end + max(1, int(np.ceil(LOOKAHEAD_BEATS / beats)))]
    head = [after[0][:1], [metre] if metre >= 0 and (num, den) != (4, 4) else [], after[0][1:], *after[1:]]
    context = fim_context(vocab.bos_id, np.concatenate(head).tolist(), np.concatenate(bars[:first]).tolist(), True)
    return np.asarray(context + np.concatenate(bars[first:end]).tolist(), dtype=np.int64)
