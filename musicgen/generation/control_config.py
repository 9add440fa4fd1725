"""The musician's controls as settings: what a piece asks for (a chord chart, chord tones, tempo, metre, density,
key), validated and typed once, frozen, and changed with ``dataclasses.replace``. How each is imposed at decode
time is :mod:`.controls` (its docstring is the manual); this module is the settings alone, so options, the studio
and the stream can hold them without the runtime rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..config import UserError
from ..tokenizer import PITCH_CLASS_NAMES, Bins, TokenType, Vocabulary, parse_time_signature
from .chords import ChordChart, parse_chart, parse_key

__all__ = ["CHORD_TONES", "ControlConfig", "DENSITY_FACTORS", "PREFER_FACTOR"]

#: how strictly the notes follow the chart (see the module docstring), strictest first
CHORD_TONES = ("only", "prefer", "free")
#: chord_tones=prefer: factor on the probability of a pitch outside the chart's current chord
PREFER_FACTOR = 0.1
#: density name -> factor on the odds of starting another note at an onset vs moving on
DENSITY_FACTORS: dict[str, float] = {"low": 1.0 / 3.0, "medium": 1.0, "high": 3.0}


@dataclass(frozen=True)
class ControlConfig:
    """The controls of one piece (None = that control is off; see the module docstring)."""

    chords: str | None = None
    bpm: float | None = None
    time_signature: str | None = None
    density: str | float | None = None
    key: str | None = None
    chord_tones: str = "only"

    def __post_init__(self) -> None:
        if self.chords is not None:
            object.__setattr__(self, "chords", str(self.chords))
            self.chart  # noqa: B018 - validate now
        if self.bpm is not None:
            try:
                bpm = float(self.bpm)
            except (TypeError, ValueError):
                raise UserError(f"bpm={self.bpm!r}: must be a number of beats per minute (e.g. 90)") from None
            if isinstance(self.bpm, bool) or not math.isfinite(bpm) or bpm <= 0:
                raise UserError(f"bpm={self.bpm!r}: must be a positive number of beats per minute (e.g. 90)")
            object.__setattr__(self, "bpm", bpm)
        if self.time_signature is not None:
            try:
                parse_time_signature(str(self.time_signature))
            except ValueError:
                raise UserError(f"time_signature={self.time_signature!r}: use a metre such as 4/4, 3/4 or 6/8") \
                    from None
            object.__setattr__(self, "time_signature", str(self.time_signature))
        if self.density is not None:
            self.density_factor  # noqa: B018
        if self.key is not None:
            parse_key(self.key)
        tones = "only" if self.chord_tones is None else str(self.chord_tones).strip().lower()
        if tones not in CHORD_TONES:
            raise UserError(f"chord_tones={self.chord_tones!r}: use {', '.join(CHORD_TONES)}")
        object.__setattr__(self, "chord_tones", tones)

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.chords, self.bpm, self.time_signature, self.density, self.key))

    @property
    def chart(self) -> ChordChart | None:
        return parse_chart(self.chords) if self.chords is not None else None

    @property
    def metre(self) -> tuple[int, int] | None:
        return parse_time_signature(self.time_signature) if self.time_signature is not None else None

    @property
    def density_factor(self) -> float:
        """The factor on the odds of another note (1 = off)."""
        if self.density is None:
            return 1.0
        if isinstance(self.density, str) and self.density.strip().lower() in DENSITY_FACTORS:
            return DENSITY_FACTORS[self.density.strip().lower()]
        try:
            factor = float(self.density)
        except (TypeError, ValueError):
            factor = float("nan")
        if isinstance(self.density, bool) or not math.isfinite(factor) or factor <= 0:
            raise UserError(f"density={self.density!r}: use low, medium, high or a positive factor (e.g. 2.0)")
        return factor

    def check(self, vocab: Vocabulary) -> None:
        """What the checkpoint's vocabulary must offer (before sampling): Chord tokens, the metre, the tempo."""
        cfg = vocab.config
        if self.chords is not None and not vocab.ranges[TokenType.CHORD].size:
            raise UserError(f"chords={self.chords!r}: this checkpoint's vocabulary has no Chord tokens "
                            "(it was trained with tokenizer.chords=false)")
        if self.time_signature is not None and self.metre not in [tuple(ts) for ts in vocab.time_signatures]:
            raise UserError(f"time_signature={self.time_signature}: this checkpoint's vocabulary has no "
                            f"TimeSig_{self.time_signature} token (grid {cfg.grid} steps per whole note: a bar must "
                            "be a whole number of steps, at most four whole notes); use e.g. 4/4, 3/4 or 6/8")
        if self.bpm is not None and not cfg.tempo_min <= self.bpm <= cfg.tempo_max:
            raise UserError(f"bpm={self.bpm:g}: outside this checkpoint's tempo range "
                            f"({cfg.tempo_min:g}-{cfg.tempo_max:g} BPM)")

    def resolved(self, vocab: Vocabulary) -> dict[str, Any]:
        """The controls as applied with this vocabulary (for the piece's .json)."""
        bins = Bins(vocab.config)
        chart = self.chart
        out: dict[str, Any] = {"chords": self.chords, "chart": chart.names() if chart else None,
                               "bpm": self.bpm, "time_signature": self.time_signature,
                               "density": self.density, "key": self.key,
                               "chord_tones": self.chord_tones if chart else None}
        if self.bpm is not None:
            b = bins.tempo_bin(self.bpm)
            out["tempo_bin"], out["tempo_bpm"] = b, bins.tempo_of_bin[b]
        if self.density is not None:
            out["density_factor"] = round(self.density_factor, 6)
        if self.key is not None:
            name, scale = parse_key(self.key)
            out["key_name"], out["key_pitch_classes"] = name, [PITCH_CLASS_NAMES[p] for p in sorted(scale)]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"chords": self.chords, "bpm": self.bpm, "time_signature": self.time_signature,
                "density": self.density, "key": self.key, "chord_tones": self.chord_tones}
