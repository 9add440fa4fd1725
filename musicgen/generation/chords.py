"""Chord charts and keys as a musician writes them ('Am F | C G', 'F# minor'), parsed into the tokenizer's chord
indices and pitch classes, and where a chart bar's chords fall in a bar (the decode-time controls use them,
:mod:`.controls`; benchmarks too)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import UserError
from ..tokenizer import CHORD_QUALITIES, chord_name

__all__ = ["ChordChart", "N_QUALITIES", "chord_slots", "parse_chart", "parse_chord", "parse_key"]

QUALITY_NAMES = tuple(CHORD_QUALITIES)
N_QUALITIES = len(QUALITY_NAMES)
#: chord-symbol suffix -> the tokenizer's quality name (case matters: M7 is major seventh, m7 minor seventh)
QUALITY_SUFFIXES: dict[str, str] = {
    "": "maj", "maj": "maj", "M": "maj",
    "m": "min", "min": "min", "-": "min",
    "dim": "dim", "o": "dim", "°": "dim",
    "aug": "aug", "+": "aug",
    "sus4": "sus4", "sus": "sus4",
    "7": "dom7", "dom7": "dom7",
    "maj7": "maj7", "M7": "maj7", "Δ7": "maj7",
    "m7": "min7", "min7": "min7", "-7": "min7",
}
_ACCIDENTALS = {"": 0, "#": 1, "♯": 1, "b": -1, "♭": -1}
_ROOTS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
_SYMBOL = re.compile(r"^([A-G])([#♯b♭]?)(.*)$")
_HELP = ("a root A-G with an optional # or b, then nothing (major), m, dim, aug, sus4, 7, maj7 or m7 "
         "(e.g. Am, F#m7, Bb, Gsus4)")
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)  # natural minor


def _root(letter: str, accidental: str) -> int:
    return (_ROOTS[letter] + _ACCIDENTALS[accidental]) % 12


def parse_chord(symbol: str) -> int:
    """'Am' -> chord index (root * n_qualities + quality, the tokenizer's order); ValueError when unknown."""
    text = str(symbol).strip()
    if ":" in text:  # the vocabulary's own spelling, e.g. A:min, C#:maj7
        root_text, quality = text.split(":", 1)
        match = _SYMBOL.match(root_text)
        if match and not match.group(3) and quality in CHORD_QUALITIES:
            return _root(match.group(1), match.group(2)) * N_QUALITIES + QUALITY_NAMES.index(quality)
        raise ValueError(text)
    match = _SYMBOL.match(text)
    if not match or match.group(3) not in QUALITY_SUFFIXES:
        raise ValueError(text)
    quality = QUALITY_SUFFIXES[match.group(3)]
    return _root(match.group(1), match.group(2)) * N_QUALITIES + QUALITY_NAMES.index(quality)


@dataclass(frozen=True)
class ChordChart:
    """A parsed chart: per bar, one or two chord indices. It repeats to fill the piece."""

    text: str
    bars: tuple[tuple[int, ...], ...]

    def bar(self, index: int) -> tuple[int, ...]:
        return self.bars[index % len(self.bars)]

    def names(self) -> list[list[str]]:
        return [[chord_name(c) for c in bar] for bar in self.bars]


def parse_chart(text: str) -> ChordChart:
    """'Am F C G' (one chord per bar) or 'Am F | C G' (bars split by |, one or two chords each) -> a chart.

    Errors are UserErrors naming the offending symbol or bar.
    """
    raw = str(text).strip()
    if not raw:
        raise UserError("chords='': give at least one chord, e.g. chords='Am F C G'")
    if "|" in raw:
        groups = [part.split() for part in raw.strip("|").split("|")]
        for number, group in enumerate(groups, 1):
            if not group:
                raise UserError(f"chords={raw!r}: bar {number} is empty (one or two chords between bars |)")
            if len(group) > 2:
                raise UserError(f"chords={raw!r}: bar {number} ({' '.join(group)}) has {len(group)} chords; a bar "
                                "holds one chord or two (halves)")
    else:
        groups = [[symbol] for symbol in raw.split()]
    bars = []
    for group in groups:
        chords = []
        for symbol in group:
            try:
                chords.append(parse_chord(symbol))
            except ValueError:
                raise UserError(f"chords={raw!r}: unknown chord symbol {symbol!r} (use {_HELP})") from None
        bars.append(tuple(chords))
    return ChordChart(raw, tuple(bars))


def parse_key(text: str) -> tuple[str, frozenset[int]]:
    """'Am', 'A minor', 'Eb', 'C major', 'F#m' -> (display name, the scale's pitch classes)."""
    raw = str(text).strip()
    compact = raw.replace(" ", "")
    match = _SYMBOL.match(compact)
    mode = match.group(3) if match else None
    if mode is not None and mode != "M":
        mode = mode.lower()
    if match and mode in ("", "maj", "major", "M"):
        root, scale, mode_name = _root(match.group(1), match.group(2)), MAJOR_SCALE, "major"
    elif match and mode in ("m", "min", "minor"):
        root, scale, mode_name = _root(match.group(1), match.group(2)), MINOR_SCALE, "minor"
    else:
        raise UserError(f"key={raw!r}: use a root A-G with an optional # or b and an optional mode: C, Am, Eb, "
                        "'F# minor', 'D major'")
    spelled = match.group(1) + {"♯": "#", "♭": "b"}.get(match.group(2), match.group(2))
    return f"{spelled} {mode_name}", frozenset((root + s) % 12 for s in scale)


def chord_slots(chords: tuple[int, ...], bar_length: int, metre: tuple[int, int]) -> list[tuple[int, int]]:
    """(position, chord index) where a chart bar's chords go in a bar of this length and metre.

    One chord: at every chord segment start of the tokenizer (halves when the numerator and the length are
    even, as in `musicgen.tokenizer.score`, else the bar start only). Two chords: bar start and bar_length // 2.
    """
    if len(chords) == 1:
        parts = 2 if metre[0] % 2 == 0 and bar_length % 2 == 0 else 1
        size = bar_length // parts
        return [(i * size, chords[0]) for i in range(parts)]
    half = bar_length // 2
    return [(0, chords[0]), (half, chords[1])] if half > 0 else [(0, chords[0])]
