"""The REMI vocabulary: a saved, versioned list of token strings with fast type/value lookups.

A vocabulary is fully determined by the tokenizer config. It is stored as JSON beside every token cache and
inside every checkpoint; whoever reads ids (training resume, evaluate's cache, generation) compares the token
lists, so a mismatch is a clear error instead of a model that silently reads the wrong tokens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from .config import TokenizerConfig

VOCAB_FORMAT = "musicgen-remi-vocab"
VOCAB_VERSION = 1

PITCH_CLASS_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
# Chord qualities as pitch-class offsets from the root (rule-based recognition, as in the original REMI).
CHORD_QUALITIES: dict[str, tuple[int, ...]] = {
    "maj": (0, 4, 7),
    "min": (0, 3, 7),
    "dim": (0, 3, 6),
    "aug": (0, 4, 8),
    "sus4": (0, 5, 7),
    "dom7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11),
    "min7": (0, 3, 7, 10),
}
DRUM_PROGRAM = 128  # Program value used for drum notes (MIDI channel 10), kept apart from the 128 GM programs.
TIME_SIGNATURE_DENOMINATORS = (2, 4, 8, 16)


class TokenType(IntEnum):
    """Token families; their order is the order of the vocabulary."""

    PAD = 0
    BOS = 1
    EOS = 2
    BAR = 3
    TIME_SIG = 4
    POSITION = 5
    TEMPO = 6
    CHORD = 7
    PROGRAM = 8
    VELOCITY = 9
    PITCH = 10
    DURATION = 11


def supported_time_signatures(config: TokenizerConfig) -> list[tuple[int, int]]:
    """Metres the grid can represent: whole number of steps per bar, at most `max_bar_steps`."""
    result = []
    for den in TIME_SIGNATURE_DENOMINATORS:
        for num in range(1, 33):
            steps = config.grid * num / den
            if steps == int(steps) and 1 <= steps <= config.max_bar_steps:
                result.append((num, den))
    return result


def duration_bins(config: TokenizerConfig) -> list[int]:
    """Duration values in grid steps: every step up to two whole notes, then coarser up to eight."""
    g = config.grid
    bins = list(range(1, 2 * g + 1))
    bins += [2 * g + k * (g // 4) for k in range(1, 9)]
    bins += [4 * g + k * (g // 2) for k in range(1, 9)]
    return sorted(set(bins))


def chord_names() -> list[str]:
    """Chord token values in id order: root-major, then `CHORD_QUALITIES` in its order (the vocabulary)."""
    return [f"{root}:{quality}" for root in PITCH_CLASS_NAMES for quality in CHORD_QUALITIES]


def chord_name(index: int) -> str:
    """Vocabulary spelling of a chord index (root * n_qualities + quality), e.g. 'A:min'."""
    qualities = tuple(CHORD_QUALITIES)
    return f"{PITCH_CLASS_NAMES[index // len(qualities)]}:{qualities[index % len(qualities)]}"


def chord_pitch_classes(index: int) -> set[int]:
    """The pitch classes of a chord index."""
    qualities = tuple(CHORD_QUALITIES)
    root = index // len(qualities)
    return {(root + off) % 12 for off in CHORD_QUALITIES[qualities[index % len(qualities)]]}


@dataclass
class TypeRange:
    """Token ids of one family are contiguous: [start, start + size)."""

    start: int
    size: int

    @property
    def stop(self) -> int:
        return self.start + self.size


class Vocabulary:
    """Token strings <-> ids, plus per-id type and value arrays used by the encoder, decoder and grammar."""

    def __init__(self, config: TokenizerConfig) -> None:
        self.config = config
        self.time_signatures = supported_time_signatures(config)
        self.durations = duration_bins(config)
        self.chords = chord_names()
        tokens: list[str] = []
        types: list[int] = []
        values: list[int] = []
        self.ranges: dict[TokenType, TypeRange] = {}

        def add(kind: TokenType, names: list[str], vals: list[int]) -> None:
            self.ranges[kind] = TypeRange(len(tokens), len(names))
            tokens.extend(names)
            types.extend([int(kind)] * len(names))
            values.extend(vals)

        add(TokenType.PAD, ["PAD"], [0])
        add(TokenType.BOS, ["BOS"], [0])
        add(TokenType.EOS, ["EOS"], [0])
        add(TokenType.BAR, ["Bar"], [0])
        add(TokenType.TIME_SIG, [f"TimeSig_{n}/{d}" for n, d in self.time_signatures],
            list(range(len(self.time_signatures))))
        add(TokenType.POSITION, [f"Position_{p}" for p in range(config.max_bar_steps)],
            list(range(config.max_bar_steps)))
        add(TokenType.TEMPO, [f"Tempo_{i}" for i in range(config.tempo_bins)], list(range(config.tempo_bins)))
        if config.chords:
            add(TokenType.CHORD, [f"Chord_{c}" for c in self.chords], list(range(len(self.chords))))
        else:
            add(TokenType.CHORD, [], [])
        if config.programs:
            add(TokenType.PROGRAM, [f"Program_{p}" for p in range(128)] + ["Program_drums"], list(range(129)))
        else:
            add(TokenType.PROGRAM, [], [])
        add(TokenType.VELOCITY, [f"Velocity_{i}" for i in range(config.velocity_bins)],
            list(range(config.velocity_bins)))
        add(TokenType.PITCH, [f"Pitch_{p}" for p in range(128)], list(range(128)))
        add(TokenType.DURATION, [f"Duration_{d}" for d in self.durations], self.durations)

        self.tokens: list[str] = tokens
        self.token_to_id: dict[str, int] = {t: i for i, t in enumerate(tokens)}
        self.types = np.asarray(types, dtype=np.int8)
        self.values = np.asarray(values, dtype=np.int32)
        self.pad_id = self.token_to_id["PAD"]
        self.bos_id = self.token_to_id["BOS"]
        self.eos_id = self.token_to_id["EOS"]
        self.bar_id = self.token_to_id["Bar"]
        self._time_signature_index = {ts: i for i, ts in enumerate(self.time_signatures)}
        self._duration_index = {d: i for i, d in enumerate(self.durations)}

    def __len__(self) -> int:
        return len(self.tokens)

    # --- ids of the parametrised families -------------------------------------------------------------
    def id_of(self, kind: TokenType, index: int) -> int:
        """Id of the `index`-th token of family `kind` (e.g. Position 3, Pitch 60, Tempo bin 12)."""
        span = self.ranges[kind]
        if not 0 <= index < span.size:
            raise ValueError(f"{kind.name} index {index} out of range 0..{span.size - 1}")
        return span.start + index

    def time_markers(self) -> tuple[int, int, int]:
        """(Bar id, first Position id, number of Position tokens): what a model's bar clock reads."""
        span = self.ranges[TokenType.POSITION]
        return self.bar_id, int(span.start), int(span.size)

    def time_signature_id(self, numerator: int, denominator: int) -> int:
        return self.id_of(TokenType.TIME_SIG, self._time_signature_index[(numerator, denominator)])

    def duration_id(self, steps: int) -> int:
        return self.id_of(TokenType.DURATION, self._duration_index[steps])

    def program_id(self, program: int) -> int:
        return self.id_of(TokenType.PROGRAM, program)

    def type_of(self, token_id: int) -> TokenType:
        return TokenType(int(self.types[token_id]))

    def ids_of_type(self, kind: TokenType) -> range:
        span = self.ranges[kind]
        return range(span.start, span.stop)

    # --- persistence ------------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Short hash of the token list: equal fingerprints mean interchangeable vocabularies."""
        return hashlib.sha256("\n".join(self.tokens).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "tokenizer": self.config.to_dict(),
            "fingerprint": self.fingerprint,
            "size": len(self.tokens),
            "tokens": self.tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "vocabulary") -> "Vocabulary":
        """Rebuild from `to_dict` output; a damaged or foreign vocabulary is a clear error naming `source`."""
        if not isinstance(data, dict) or data.get("format") != VOCAB_FORMAT:
            raise ValueError(f"{source}: not a musicgen vocabulary")
        if data.get("version") != VOCAB_VERSION:
            raise ValueError(f"{source}: vocabulary version {data.get('version')} is not supported "
                             f"(this musicgen reads version {VOCAB_VERSION})")
        try:  # bounded settings (tempo_bins=200000000 would build a list of 200 M tokens)
            config = TokenizerConfig.from_mapping(data.get("tokenizer"))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{source}: damaged vocabulary ({exc})") from None
        vocab = cls(config)
        if vocab.tokens != list(data.get("tokens", [])):
            raise ValueError(f"{source}: token list does not match its tokenizer settings (file edited or "
                             "written by another musicgen version)")
        return vocab

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read vocabulary ({exc})") from None
        return cls.from_dict(data, source=str(path))
