"""Decoding windows of a long token sequence in context (for the drift statistics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class WindowDecoder:
    """`decode_fn` for `windowed_statistics` that knows where each window sits in the whole sequence.

    Why not decode each window's ids on their own: a window cut at token 1000 starts mid-bar, and the grammar
    would skip its leading Position/Note tokens (counted as "ungrammatical", which they are not) and read a
    3/4 piece as 4/4 (its only TimeSig token is in bar 1). Instead, the whole sequence is walked once with the
    grammar: a token counts as skipped only if it was ungrammatical *in context*; each window is decoded from
    its first Bar (the partial bar before it belongs to the previous window and is left out of this window's
    statistics), with the metre in force re-stated after that Bar. Windows must be asked for in order, as
    `windowed_statistics` does; each call checks that the ids match.
    """

    def __init__(self, tokenizer: Any, ids: Sequence[int]) -> None:
        from ..tokenizer import TokenType

        self._time_sig = TokenType.TIME_SIG
        vocab = tokenizer.vocab
        self.tokenizer = tokenizer
        self.ids = [int(t) for t in ids]
        self.skipped = np.zeros(len(self.ids), dtype=bool)
        self.metre: list[tuple[int, int]] = []
        for i, _, state, allowed in tokenizer.grammar.walk(self.ids):
            self.skipped[i] = not allowed
            self.metre.append(tuple(state.metre))
        self.bar_id, self.bos_id = vocab.bar_id, vocab.bos_id
        self.vocab = vocab
        self.cursor = 0

    def __call__(self, chunk: Sequence[int]) -> tuple[Any, int]:
        start, stop = self.cursor, self.cursor + len(chunk)
        if [int(t) for t in chunk] != self.ids[start:stop]:
            raise ValueError("WindowDecoder: windows must be decoded in order over the sequence it was built for")
        self.cursor = stop
        n_skipped = int(self.skipped[start:stop].sum())
        window = self.ids[start:stop]
        bars = [i for i, t in enumerate(window) if t == self.bar_id]
        if start == 0 or not bars:
            body = window if start == 0 else []
        else:
            first = bars[0]
            body = window[first:]
            metre = self.metre[start + first]
            follows_ts = len(body) > 1 and self.vocab.type_of(body[1]) == self._time_sig
            if metre != (4, 4) and not follows_ts:
                body = [body[0], self.vocab.time_signature_id(*metre)] + body[1:]
        midi, _ = self.tokenizer.decode_with_report(body)
        return midi, n_skipped
