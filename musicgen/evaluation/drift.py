"""Statistics along a long generated token sequence, window by window.

Why: long-form generation can start well and degrade -- harmony wanders (H4,
CPI rise), rhythm loosens (GS falls), the model goes quiet (empty-bar rate
rises) or emits ungrammatical tokens (skipped share rises).  A single
whole-piece number hides *when* that happens; computing the same statistics
on consecutive token windows shows the trajectory.

The tokenizer is deliberately not imported: the caller passes ``decode_fn``,
so this module works with any tokenizer whose decode can be wrapped as
``ids -> (miditoolkit.MidiFile, n_skipped)``.  Each window is decoded on its
own, so its MIDI starts at time 0; with REMI-like tokens a window that starts
mid-bar is the decoder's business (typically the leading tokens before the
first Bar are placed in bar 0 or skipped and counted in ``n_skipped``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Optional

from .metrics import music_statistics, skipped_token_share

if TYPE_CHECKING:
    from miditoolkit import MidiFile

__all__ = ["windowed_statistics"]

DecodeFn = Callable[[list[int]], "tuple[MidiFile, int]"]


def windowed_statistics(
    token_ids: Sequence[int],
    decode_fn: DecodeFn,
    window: int = 1000,
    *,
    drop_last: bool = False,
    stats_kwargs: Optional[Mapping[str, Any]] = None,
) -> list[dict[str, float]]:
    """Music statistics of consecutive, non-overlapping windows of ``window`` tokens.

    Window ``i`` covers ``token_ids[i*window : (i+1)*window]``; the final
    window may be shorter (it is kept unless ``drop_last``; its length is
    reported as ``n_tokens`` so callers can filter short windows, whose
    statistics are noisier).  Each window is decoded with
    ``decode_fn(list_of_int_ids) -> (MidiFile, n_skipped)`` and summarised by
    :func:`~musicgen.evaluation.metrics.music_statistics` (``stats_kwargs`` are
    forwarded).  Each returned dict holds those keys plus:

    * ``window_index``: ``i`` (0-based),
    * ``start_token``: index of the window's first token in ``token_ids``,
    * ``n_tokens``: number of tokens in the window,
    * ``skipped_share``: ``n_skipped / n_tokens`` (see
      :func:`~musicgen.evaluation.metrics.skipped_token_share`).

    ``token_ids`` may be a list, a NumPy array or a 1-D torch tensor; ids are
    converted to Python ints before decoding.  Decoder exceptions propagate:
    a decode that *crashes* is a tokenizer bug, not a statistic.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    kwargs = dict(stats_kwargs or {})
    total = len(token_ids)
    out: list[dict[str, float]] = []
    for i, start in enumerate(range(0, total, window)):
        chunk = [int(t) for t in token_ids[start : start + window]]
        if drop_last and len(chunk) < window:
            break
        midi, n_skipped = decode_fn(chunk)
        row: dict[str, float] = dict(music_statistics(midi, **kwargs))
        row["skipped_share"] = skipped_token_share(int(n_skipped), len(chunk))
        row["window_index"] = float(i)
        row["start_token"] = float(start)
        row["n_tokens"] = float(len(chunk))
        out.append(row)
    return out
