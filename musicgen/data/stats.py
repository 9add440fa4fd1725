"""Corpus statistics: the bounds decoding's guards and soft rules use, measured on a corpus' own training files.

`python -m musicgen.data.prepare` writes `<cache_dir>/corpus_stats.json` beside the token cache; training stores
it in every checkpoint (`corpus_stats`), and generation uses its `decoding` bounds as the defaults of the
matching options (`musicgen.generation.guards.resolve_guard_values`: an explicit option wins, else the
checkpoint's corpus statistics, else `GuardConfig`'s own default). A checkpoint without them (the shipped model,
trained on POP909 before this existed) decodes under `GuardConfig`'s defaults, which are POP909's.

How each bound is derived from the songs (everything measured on the training split, as tokenized). Each song
counts once, whatever its length, and the bounds are percentiles across songs, so that one odd file (a test file
striking all 47 drums at once, a dense orchestral tutti) does not set the corpus' rules:

* ``max_notes_per_onset``: the 90th percentile over songs of each song's most notes at one onset (POP909: 15, today's
  default, is the most of any song);
* ``max_empty_bars``: one more than the 90th percentile of the corpus' runs of empty bars inside a song (at least
  2; POP909: 90% of its silent stretches are at most 3 bars -> 4, today's default);
* ``min_bars``: the 10th percentile of the songs' lengths in bars, at most 8 (POP909's songs are long: 8);
* ``min_notes_per_bar`` / ``max_notes_per_bar``: 0.75 x the 10th percentile over songs of each song's sparsest
  16-bar window (notes per four-beat bar; a song shorter than that: its whole length) / 1.2 x the 90th percentile of
  each song's densest window. POP909's sparsest 16-bar test window holds 8 notes per bar (-> 6), its densest 34 (-> 40);
* ``min_mean_pitch`` / ``max_mean_pitch``: the 10th / 90th percentile over songs of each song's lowest / highest mean
  pitch of 64 notes, widened by 3 semitones (training transposes by up to +-6).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..tokenizer import DRUM_PROGRAM, RemiGrammar, TokenType, Vocabulary

STATS_FILE = "corpus_stats.json"
STATS_VERSION = 2
#: the GuardConfig fields a corpus sets (the others, e.g. window lengths, are not the corpus' business)
DECODING_KEYS = ("max_notes_per_onset", "max_empty_bars", "min_bars", "min_notes_per_bar", "max_notes_per_bar",
                 "min_mean_pitch", "max_mean_pitch")
DENSITY_WINDOW_BARS = 16
REGISTER_WINDOW_NOTES = 64


@dataclass
class SongBars:
    """One tokenized song, bar by bar: each bar's length in grid steps and its notes (step in bar, program,
    pitch), plus the metres it uses."""

    lengths: list[int] = field(default_factory=list)
    notes: list[list[tuple[int, int, int]]] = field(default_factory=list)
    metres: list[tuple[int, int]] = field(default_factory=list)

    def onset_pitch_sets(self) -> list[frozenset[tuple[int, int]]]:
        """Per bar, the set of (onset step, pitch) pairs of its notes (drums included)."""
        return [frozenset((step, pitch) for step, _prog, pitch in bar) for bar in self.notes]


def song_bars(ids: Iterable[int], vocab: Vocabulary, grammar: RemiGrammar | None = None) -> SongBars:
    """Walk token ids with the REMI grammar and collect bars (tokens the grammar rejects are skipped)."""
    grammar = grammar or RemiGrammar(vocab)
    types, values = np.asarray(vocab.types), np.asarray(vocab.values)
    out = SongBars()
    for step in grammar.walk(ids):
        if not step.allowed:
            continue
        kind, state = int(types[step.token]), step.state
        if kind == TokenType.BAR:
            out.lengths.append(state.bar_length)
            out.notes.append([])
            out.metres.append(tuple(state.metre))
        elif out.notes:
            out.lengths[-1] = state.bar_length  # a TimeSig after the Bar sets the bar's true length
            out.metres[-1] = tuple(state.metre)
            if kind == TokenType.PITCH:
                out.notes[-1].append((max(state.position, 0), state.program, int(values[step.token])))
    return out


def _percentile(values: list[float], q: float, default: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if values else default


def measure_songs(songs: list[SongBars], grid: int) -> dict[str, Any]:
    """Raw measurements of a list of songs (the input of `decoding_bounds`, and of the benchmark's comparison)."""
    onset_max, empty_runs, lengths, densities, mean_pitches = [], [], [], [], []
    metres: dict[str, int] = {}
    notes_total = bars_total = 0.0
    for song in songs:
        if not song.notes:
            continue
        lengths.append(len(song.notes))
        run, song_onset_max = 0, 0
        counts = np.asarray([len(bar) for bar in song.notes], dtype=np.float64)
        quarters = np.asarray([max(n, 1) / grid for n in song.lengths], dtype=np.float64)  # bars of four beats
        notes_total += counts.sum()
        bars_total += quarters.sum()
        for bar, metre in zip(song.notes, song.metres):
            metres[f"{metre[0]}/{metre[1]}"] = metres.get(f"{metre[0]}/{metre[1]}", 0) + 1
            per_onset: dict[int, int] = {}
            for step, _prog, _pitch in bar:
                per_onset[step] = per_onset.get(step, 0) + 1
            song_onset_max = max(song_onset_max, max(per_onset.values(), default=0))
            if bar:
                if run:
                    empty_runs.append(run)
                run = 0
            else:
                run += 1
        onset_max.append(song_onset_max)
        window = min(DENSITY_WINDOW_BARS, len(counts))
        csum, qsum = np.concatenate([[0], np.cumsum(counts)]), np.concatenate([[0], np.cumsum(quarters)])
        spans = qsum[window:] - qsum[:-window]
        song_density = (csum[window:] - csum[:-window])[spans > 0] / spans[spans > 0]
        if len(song_density):
            densities.append((float(song_density.min()), float(song_density.max())))
        pitches = np.asarray([p for bar in song.notes for _s, prog, p in bar if prog != DRUM_PROGRAM], dtype=np.float64)
        if len(pitches):
            w = min(REGISTER_WINDOW_NOTES, len(pitches))
            c = np.concatenate([[0], np.cumsum(pitches)])
            means = (c[w:] - c[:-w]) / w
            mean_pitches.append((float(means.min()), float(means.max())))
    return {"songs": len(lengths), "max_notes_per_onset": onset_max, "empty_runs": empty_runs, "bars": lengths,
            "density_range": densities, "mean_pitch_range": mean_pitches, "metres": metres,
            "notes_per_bar": float(notes_total / bars_total) if bars_total else 0.0}


def decoding_bounds(measured: dict[str, Any]) -> dict[str, float | int]:
    """The guards' bounds from `measure_songs` output (the rules are in the module docstring)."""
    from ..generation.guards import GuardConfig

    default = GuardConfig()
    onset = int(math.ceil(_percentile(measured["max_notes_per_onset"], 90, 0))) or default.max_notes_per_onset
    empty = max(2, int(math.ceil(_percentile(measured["empty_runs"], 90, 1.0))) + 1)
    min_bars = int(min(default.min_bars, max(1, math.floor(_percentile(measured["bars"], 10, default.min_bars)))))
    sparsest = [lo for lo, _hi in measured["density_range"]]
    densest = [hi for _lo, hi in measured["density_range"]]
    floor = round(0.75 * _percentile(sparsest, 10, default.min_notes_per_bar / 0.75), 2)
    ceiling = round(1.2 * _percentile(densest, 90, default.max_notes_per_bar / 1.2), 2)
    ceiling = max(ceiling, floor + 1.0)
    low = _percentile([lo for lo, _hi in measured["mean_pitch_range"]], 10, default.min_mean_pitch + 3) - 3
    high = _percentile([hi for _lo, hi in measured["mean_pitch_range"]], 90, default.max_mean_pitch - 3) + 3
    low, high = max(0.0, round(low, 1)), min(127.0, round(high, 1))
    if high - low < 2:
        low, high = max(0.0, low - 1), min(127.0, high + 1)
    return {"max_notes_per_onset": onset, "max_empty_bars": empty, "min_bars": min_bars,
            "min_notes_per_bar": floor, "max_notes_per_bar": ceiling, "min_mean_pitch": low, "max_mean_pitch": high}


def corpus_statistics(cache: Any, split: str = "train") -> dict[str, Any]:
    """Statistics of one split of a token cache (every song when that split is empty): a small JSON-able dict
    with the `decoding` bounds and a summary (songs, notes per bar, metres) for people."""
    vocab = cache.vocab
    grammar = RemiGrammar(vocab)
    entries = cache.split(split) or list(cache.songs)
    songs = [song_bars(cache.song_tokens(s), vocab, grammar) for s in entries]
    measured = measure_songs(songs, int(vocab.config.grid))
    stats = {"version": STATS_VERSION, "split": split if cache.split(split) else "all", "songs": measured["songs"],
             "notes_per_bar": round(measured["notes_per_bar"], 3), "metres": measured["metres"],
             "decoding": decoding_bounds(measured)}
    return json.loads(json.dumps(stats))  # plain Python data only (a checkpoint stores it; loading refuses numpy)


def write_corpus_statistics(cache: Any) -> dict[str, Any]:
    """Compute and write `<cache_dir>/corpus_stats.json` (atomically); returns the statistics."""
    from ..atomic import atomic_write_bytes

    stats = corpus_statistics(cache)
    stats["tokens_sha1"] = str(cache.manifest.get("tokens", {}).get("sha1", ""))
    atomic_write_bytes(Path(cache.dir) / STATS_FILE, json.dumps(stats, indent=1).encode())
    return stats


def read_corpus_statistics(cache: Any) -> dict[str, Any]:
    """The cache's statistics: its `corpus_stats.json` when it belongs to these very tokens, else computed now."""
    path = Path(cache.dir) / STATS_FILE
    digest = str(cache.manifest.get("tokens", {}).get("sha1", ""))
    try:
        stats = json.loads(path.read_text())
        if stats.get("version") == STATS_VERSION and stats.get("tokens_sha1") == digest:
            return stats
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return write_corpus_statistics(cache)
    except OSError:  # a read-only cache folder: computed, not stored
        return {**corpus_statistics(cache), "tokens_sha1": digest}
