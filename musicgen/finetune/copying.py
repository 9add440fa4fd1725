"""Does a generated piece copy its training files? The longest run of consecutive bars copied from one of them.

A bar of a generated piece *copies* a bar of a training file when at least `COPY_SHARE` (90%) of the (onset,
pitch) pairs of each are in the other (onsets are grid steps from the bar line; drums included; an empty bar copies
nothing). A run is a stretch of consecutive generated bars copying consecutive bars of the same file, in order. A
model fine-tuned on a few files can memorise them: more than `WARN_BARS` (4) bars in a row is reported as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..data.stats import song_bars
from ..tokenizer import RemiGrammar, Vocabulary

COPY_SHARE = 0.9
WARN_BARS = 4

Bar = frozenset  # of (onset step, pitch)


@dataclass(frozen=True)
class CopyReport:
    """The longest copied run of one piece: its length in bars, the file, and where it starts in both."""

    bars: int
    file: str | None = None
    piece_bar: int = 0  # first copied bar of the piece (0-based)
    file_bar: int = 0  # the bar of the file it copies (0-based)

    def warning(self, bound: int = WARN_BARS) -> str | None:
        if self.bars <= bound:
            return None
        return (f"bars {self.piece_bar + 1}-{self.piece_bar + self.bars} copy {self.bars} bars in a row of the "
                f"training file {self.file} (from its bar {self.file_bar + 1}); the model has memorised it: train "
                "fewer steps or on more files")

    def to_dict(self) -> dict[str, Any]:
        return {"bars": self.bars, "file": self.file, "piece_bar": self.piece_bar, "file_bar": self.file_bar}


def _copies(a: Bar, b: Bar) -> bool:
    if not a or not b:
        return False
    shared = len(a & b)
    return shared >= COPY_SHARE * len(a) and shared >= COPY_SHARE * len(b)


class CorpusBars:
    """The bars of a set of training songs, indexed for the copy check."""

    def __init__(self, songs: Iterable[tuple[str, Sequence[Bar]]]) -> None:
        self.songs = [(name, list(bars)) for name, bars in songs]
        self.index: dict[tuple[int, int], list[tuple[int, int]]] = {}  # a bar's first pair -> (song, bar)
        for s, (_name, bars) in enumerate(self.songs):
            for b, bar in enumerate(bars):
                for pair in bar:
                    self.index.setdefault(pair, []).append((s, b))

    @classmethod
    def from_cache(cls, cache: Any, split: str = "train") -> "CorpusBars":
        """The bars of a token cache's `split` (every song when the split is empty)."""
        grammar = RemiGrammar(cache.vocab)
        entries = cache.split(split) or list(cache.songs)
        return cls((e.relpath, song_bars(cache.song_tokens(e), cache.vocab, grammar).onset_pitch_sets())
                   for e in entries)

    def candidates(self, bar: Bar) -> set[tuple[int, int]]:
        """Training bars that share at least one pair with `bar` (only those can copy it)."""
        out: set[tuple[int, int]] = set()
        for pair in bar:
            out.update(self.index.get(pair, ()))
        return out


def piece_bars(ids: Iterable[int], vocab: Vocabulary) -> list[Bar]:
    """A token sequence's bars as sets of (onset, pitch)."""
    return song_bars(ids, vocab).onset_pitch_sets()


def longest_copied_run(bars: Sequence[Bar], corpus: CorpusBars) -> CopyReport:
    """The longest run of consecutive bars of `bars` that copy consecutive bars of one training song."""
    best = CopyReport(0)
    runs: dict[tuple[int, int], int] = {}  # (song, bar) copied by the previous piece bar -> run length there
    for i, bar in enumerate(bars):
        current: dict[tuple[int, int], int] = {}
        for s, b in corpus.candidates(bar):
            if _copies(bar, corpus.songs[s][1][b]):
                length = runs.get((s, b - 1), 0) + 1
                current[(s, b)] = length
                if length > best.bars:
                    best = CopyReport(length, corpus.songs[s][0], i - length + 1, b - length + 1)
        runs = current
    return best
