"""Musician's controls imposed at decode time: a chord chart, tempo, metre, note density and key.

REMI already carries Chord, Tempo and TimeSig tokens and decoding is already grammar-constrained, so these
need no training: each is a restriction of the grammar mask (or, for density, a bias on the logits) applied
per sequence, after the grammar and before the musical guards (:mod:`.guards`, which stay last). A control
never empties a row's mask: a restriction that would leave nothing allowed is not applied at that step (the
row keeps the mask it had; counted as ``fallbacks`` in the piece's .json).

* **Chord chart** (``chords="Am F C G"``): one chord per bar, or bars separated by ``|`` with one or two
  chords each (``"Am F | C G"`` = bar 1 Am then F, bar 2 C then G; two chords split the bar in halves);
  the chart repeats to fill the piece. Symbols: root ``A``-``G`` with an optional ``#`` or ``b``, then a
  quality: none or ``maj`` (major), ``m``/``min`` (minor), ``dim``, ``aug``, ``sus4``/``sus``, ``7``/``dom7``,
  ``maj7``/``M7``, ``m7``/``min7`` (the tokenizer's eight qualities; ``A:min`` token spelling works too).
  In every bar the continuation opens with a Bar token, a Chord token is *forced* at each of the
  tokenizer's chord slots: the half-bar starts (positions 0 and bar_length/2) in metres the tokenizer splits
  in halves (even numerator, e.g. 4/4, 2/4, 6/8), position 0 only otherwise (3/4); a chart bar with two
  chords always puts the second at bar_length // 2. Mechanically: while a slot's chord is pending, no
  Position after the slot, no Bar and no EOS may be chosen (so the slot's Position must come), right after
  it (and an optional Tempo) only the chart's Chord token is allowed, and no other Chord token is allowed
  anywhere in the continuation. A Tempo token may come between the slot's Position and its Chord only at the
  continuation's first Position (where a piece states its tempo): elsewhere a model that does not expect the
  chart's chord would otherwise escape into random tempo changes. The model fills in the notes. A prompt
  that ends inside a bar gets the chart from the continuation's first Bar on.
* **Chord tones** (``chord_tones=only|prefer|free``, with a chart): how strictly the notes follow the chart,
  within each chord segment (from a chart slot to the next). Pitched (non-drum) notes only:
  ``only`` (the default): the segment's first note is the chord's root (its bass: REMI lists the notes of an
  onset from low to high), the next ones complete the chord (each a chord tone not yet played in the
  segment), and the segment may not end (no Position past it, no Bar, no EOS) before the whole chord has
  sounded; after that any chord tone; no note sounds past the next chart slot whose chord differs (longer
  Duration tokens are masked: notes are released at the chord change). ``prefer``: the root first and the
  release at chord changes, then a note outside the chord has its probability multiplied by 0.1 (a logit
  bias, scaled by the temperature). ``free``: only the Chord tokens are imposed; the model chooses every
  pitch and duration. Why ``only`` is the default: the shipped small model barely follows Chord tokens by
  itself (benchmarks/controls.py measures the three side by side against chance).
* **Tempo** (``bpm=90``): the Tempo token of the nearest tempo bin is forced right after the continuation's
  first Position, which is the bar start (Position 0) when the continuation starts with a Bar (Bar and EOS
  wait until the tempo is placed, so even a bar without notes carries it); every other Tempo token is
  forbidden, so the continuation keeps that tempo. The bin's BPM (what the MIDI file gets) is recorded.
* **Metre** (``time_signature=3/4``): at every continuation Bar whose metre differs, the TimeSig token is
  forced (so the first continuation Bar gets it, after a prompt in another metre too); every other TimeSig
  token is forbidden. The metre must be in the checkpoint's vocabulary.
* **Density** (``density=low|medium|high`` or a positive factor): wherever the grammar lets a sequence
  either start another note at the current onset or move on (after a Tempo, Chord or Duration token: the
  alternatives are Position, Bar and EOS), the probability of starting a note (Program and Velocity tokens)
  is multiplied by the factor relative to moving on: low = 1/3, medium = 1 (no change), high = 3. The bias
  is added to the logits scaled by the temperature: the factor is exact before top-k/top-p, at any temperature.
* **Key** (``key=Am``, ``key=Eb``, ``key="F# minor"``): pitch-class constraint, not transposition. A pitched
  (non-drum) note of the continuation may only use the key's scale (major, or natural minor for ``m``/
  ``min``/``minor``), plus the tones of the chart's current chord when a chart is set (so an E major chord
  in A minor keeps its G#). The prompt is left as it is (not transposed) and so is the chart.

Chart and key symbols are parsed in :mod:`.chords`. Hydra note: ``#`` must be quoted on the command line
(``'chords="C#m A E B"'``, ``'key="F#m"'``); flats (``Bb``, ``Eb``) need no quotes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..tokenizer import (DRUM_PROGRAM, Bins, GrammarState, Phase, TokenType, Vocabulary,
                         chord_pitch_classes, note_start_mask)
from .chords import N_QUALITIES, ChordChart, chord_slots, parse_key
from .control_config import CHORD_TONES, DENSITY_FACTORS, PREFER_FACTOR, ControlConfig
from .rules import DecodeRule, StepContext

__all__ = ["CHORD_TONES", "ControlConfig", "Controls", "DENSITY_FACTORS", "PREFER_FACTOR"]

@dataclass
class _Row:
    """Per-sequence bookkeeping of the controls (continuation tokens only)."""

    config: ControlConfig
    chart: ChordChart | None
    metre: tuple[int, int] | None
    tempo_id: int | None  # the forced Tempo token (bpm)
    timesig_id: int | None  # the forced TimeSig token (time_signature)
    scale: frozenset[int] | None  # the key's pitch classes
    bar: int = -1  # continuation bars started, minus one (-1 before the continuation's first Bar)
    chart_start: int = 0  # the row's bar where the chart's first bar falls (a chart replaced mid-piece: replace)
    bar_positions: int = 0  # Position tokens in the current bar
    slot: int = 0  # next chord slot of the current bar
    positions: int = 0  # continuation Position tokens
    tempo_placed: bool = False  # the bpm control's Tempo token is in the continuation
    current_chord: int | None = None  # the last chart chord placed (the key's extra tones, chord_tones)
    segment_notes: int = 0  # pitched notes since the last chart chord was placed
    segment_pcs: set[int] = field(default_factory=set)  # their pitch classes
    counts: dict[str, int] = field(default_factory=lambda: {
        "forced_chords": 0, "missed_chord_slots": 0, "forced_tempo": 0, "forced_time_signatures": 0,
        "fallbacks": 0})


class Controls(DecodeRule):
    """The controls of a batch: one `ControlConfig` for every row, or one per row (benchmarks)."""

    report_key = "controls"

    def __init__(self, vocab: Vocabulary, config: ControlConfig | Sequence[ControlConfig], batch_size: int) -> None:
        configs = [config] * batch_size if isinstance(config, ControlConfig) else list(config)
        if len(configs) != batch_size:
            raise ValueError(f"{len(configs)} control configs for a batch of {batch_size}")
        for cfg in set(configs):
            cfg.check(vocab)
        self.vocab = vocab
        self.configs = configs
        self._bins = Bins(vocab.config)
        self._types = np.asarray(vocab.types)
        self._values = np.asarray(vocab.values)
        size = len(vocab)
        self._size = size
        self._chord = vocab.ranges[TokenType.CHORD]
        self._tempo = vocab.ranges[TokenType.TEMPO]
        self._timesig = vocab.ranges[TokenType.TIME_SIG]
        self._position = vocab.ranges[TokenType.POSITION]
        self._pitch = vocab.ranges[TokenType.PITCH]
        self._duration = vocab.ranges[TokenType.DURATION]
        self._duration_values = np.asarray(vocab.values[self._duration.start:self._duration.stop])
        self._note_start = note_start_mask(vocab)
        self._pitch_masks: dict[frozenset[int], np.ndarray] = {}
        parsed = {cfg: self._parse(cfg) for cfg in set(configs)}
        self.rows = [_Row(cfg, *parsed[cfg]) for cfg in configs]
        self._tone_bias = math.log(PREFER_FACTOR)
        self._biases()

    def _parse(self, cfg: ControlConfig) -> tuple[Any, ...]:
        """(chart, metre, Tempo token, TimeSig token, key's pitch classes) of one config, as `_Row` takes them."""
        metre = cfg.metre
        return (cfg.chart, metre, self._tempo.start + self._bins.tempo_bin(cfg.bpm) if cfg.bpm is not None else None,
                self.vocab.time_signature_id(*metre) if metre is not None else None,
                parse_key(cfg.key)[1] if cfg.key is not None else None)

    def _biases(self) -> None:
        """The density bias and the rows with ``chord_tones=prefer``, from the rows' configs."""
        self._bias = np.zeros((len(self.rows), self._size), dtype=np.float32)
        for row, r in enumerate(self.rows):
            if r.config.density_factor != 1.0:
                self._bias[row, self._note_start] = math.log(r.config.density_factor)
        self._prefer = np.asarray([r.chart is not None and r.config.chord_tones == "prefer" for r in self.rows])
        self._has_bias = bool(self._bias.any()) or bool(self._prefer.any())

    def replace(self, config: ControlConfig | None = None, **settings: Any) -> None:
        """Change the controls of every row between two steps (what a live stream steers with): ``config`` a
        whole new :class:`ControlConfig`, or some of its fields (``key="G"``, ``density="high"``; None turns a
        control off). The rows' bookkeeping (bars, counts, the chord now sounding) stays. Meant for a bar line,
        right after a row's Bar token (musicgen/generation/bar_stream.py applies changes there): a new chart then
        starts with its first bar in the bar just opened, a new ``bpm`` is placed as that bar's Tempo token at
        Position 0, a new metre is forced on the next Bar. Called mid-bar, a new chart starts at the next bar
        (no further chart chord in this one) and a new bpm comes at the next Position. Invalid settings raise
        UserError (one line) and change nothing."""
        unknown = sorted(set(settings) - {f for f in ControlConfig.__dataclass_fields__})
        if unknown:
            raise ValueError(f"controls: no setting(s) {unknown}")
        news = {}
        for cfg in set(r.config for r in self.rows):
            new = config if config is not None else dataclasses.replace(cfg, **settings)
            new.check(self.vocab)
            news[cfg] = (new, self._parse(new))
        for r in self.rows:
            new, (chart, metre, tempo_id, timesig_id, scale) = news[r.config]
            if chart is not None and (r.chart is None or new.chords != r.config.chords):
                if r.bar < 0 or r.bar_positions == 0:  # nothing placed in this bar yet: the chart starts here
                    r.chart_start, r.slot = max(r.bar, 0), 0
                else:  # mid-bar: from the next bar on
                    r.chart_start, r.slot = r.bar + 1, 1 << 30
            if tempo_id != r.tempo_id:
                r.tempo_placed = False
            r.config, r.chart, r.metre, r.tempo_id, r.timesig_id, r.scale = new, chart, metre, tempo_id, timesig_id, scale
        self._biases()

    # --- bookkeeping -------------------------------------------------------------------------------
    def pending_slot(self, row: int, state: GrammarState) -> tuple[int, int] | None:
        """(position, chord index) of the current bar's next chart chord, or None (no chart, done, no bar)."""
        r = self.rows[row]
        if r.chart is None or r.bar < 0:
            return None
        slots = chord_slots(r.chart.bar(r.bar - r.chart_start), state.bar_length, state.metre)
        return slots[r.slot] if r.slot < len(slots) else None

    def observe(self, row: int, state: GrammarState, token: int, continuation: bool = True) -> None:
        """Record a continuation token (already accepted; ``state`` is the grammar state after it). The prompt's
        tokens are not the controls' business: the chart starts with the continuation."""
        if not continuation:
            return
        r = self.rows[row]
        kind = int(self._types[token])
        value = int(self._values[token])
        if kind == TokenType.BAR:
            r.bar += 1
            r.slot = 0
            r.bar_positions = 0
        elif kind == TokenType.POSITION:
            r.positions += 1
            r.bar_positions += 1
        elif kind == TokenType.TEMPO:
            if r.tempo_id is not None and not r.tempo_placed and token == r.tempo_id:
                r.counts["forced_tempo"] += 1
                r.tempo_placed = True
        elif kind == TokenType.TIME_SIG:
            if r.timesig_id is not None and token == r.timesig_id:
                r.counts["forced_time_signatures"] += 1
        elif kind == TokenType.CHORD:
            slot = self.pending_slot(row, state)
            if slot is not None and slot == (state.position, value):
                r.counts["forced_chords"] += 1
                r.slot += 1
                r.current_chord = value
                r.segment_notes = 0
                r.segment_pcs = set()
        elif kind == TokenType.PITCH and state.program != DRUM_PROGRAM:
            r.segment_notes += 1
            r.segment_pcs.add(value % 12)
        # a slot can only be passed by when a control had to fall back: count it and move on
        while True:
            slot = self.pending_slot(row, state)
            if slot is None or state.phase in (Phase.BAR, Phase.TIME_SIG) or slot[0] > state.position or (
                    slot[0] == state.position and state.phase in (Phase.POSITION, Phase.TEMPO)):
                break
            r.counts["missed_chord_slots"] += 1
            r.slot += 1

    # --- masks -------------------------------------------------------------------------------------
    def _only(self, *ids: int) -> np.ndarray:
        mask = np.zeros(self._size, dtype=bool)
        mask[list(ids)] = True
        return mask

    def _span(self, span: Any, lo: int = 0, hi: int | None = None) -> np.ndarray:
        mask = np.zeros(self._size, dtype=bool)
        mask[span.start + lo:span.stop if hi is None else span.start + hi] = True
        return mask

    def _pitch_mask(self, classes: frozenset[int]) -> np.ndarray:
        mask = self._pitch_masks.get(classes)
        if mask is None:
            mask = np.ones(self._size, dtype=bool)
            for pitch in range(self._pitch.size):
                if pitch % 12 not in classes:
                    mask[self._pitch.start + pitch] = False
            self._pitch_masks[classes] = mask
        return mask

    def wanted(self, row: int, state: GrammarState) -> list[tuple[str, np.ndarray]]:
        """For one sequence: each active control's mask of the tokens it allows now (order of application)."""
        r = self.rows[row]
        out: list[tuple[str, np.ndarray]] = []
        phase = state.phase
        if r.timesig_id is not None and phase == Phase.BAR:
            if tuple(state.metre) != r.metre:
                out.append(("time_signature", self._only(r.timesig_id)))
            else:
                out.append(("time_signature", ~self._span(self._timesig)))
        if r.tempo_id is not None:
            if r.tempo_placed:
                out.append(("bpm", ~self._span(self._tempo)))
            elif phase == Phase.POSITION and r.positions >= 1:
                out.append(("bpm", self._only(r.tempo_id)))
            elif phase in (Phase.BAR, Phase.TIME_SIG) and r.bar >= 0:  # the bar start must come, then the tempo
                mask = ~self._span(self._tempo) & ~self._span(self._position, 1)
                mask[[self.vocab.bar_id, self.vocab.eos_id]] = False
                out.append(("bpm", mask))
            else:
                out.append(("bpm", ~self._span(self._tempo)))
        if r.chart is not None:
            slot = self.pending_slot(row, state)
            if slot is None:
                out.append(("chords", ~self._span(self._chord)))
            else:
                pos, chord = slot
                if phase in (Phase.POSITION, Phase.TEMPO) and state.position == pos:
                    mask = self._only(self._chord.start + chord)
                    if phase == Phase.POSITION and r.positions == 1:  # the piece's (or continuation's) tempo
                        mask |= self._span(self._tempo)
                    out.append(("chords", mask))
                else:
                    mask = ~self._span(self._chord)
                    mask &= ~self._span(self._position, pos + 1)
                    mask[[self.vocab.bar_id, self.vocab.eos_id]] = False
                    out.append(("chords", mask))
        if r.scale is not None and phase == Phase.VELOCITY and state.program != DRUM_PROGRAM:
            classes = r.scale
            if r.chart is not None and r.current_chord is not None and r.bar >= 0:
                classes = classes | chord_pitch_classes(r.current_chord)
            out.append(("key", self._pitch_mask(frozenset(classes))))
        if r.chart is not None and r.config.chord_tones != "free" and r.current_chord is not None and r.bar >= 0:
            out += self._chord_tone_masks(row, state)
        return out

    def _chord_tone_masks(self, row: int, state: GrammarState) -> list[tuple[str, np.ndarray]]:
        """``chord_tones=prefer|only`` (see the module docstring) in the chord segment now sounding."""
        r, phase = self.rows[row], state.phase
        strict = r.config.chord_tones == "only"
        tones = chord_pitch_classes(r.current_chord)
        missing = tones - r.segment_pcs
        pitched = state.program != DRUM_PROGRAM
        out: list[tuple[str, np.ndarray]] = []
        if phase == Phase.VELOCITY and pitched:  # the pitch comes next
            if not r.segment_notes:  # the segment's first note: the root (its bass: REMI lists an onset low to high)
                out.append(("chord_tones", self._pitch_mask(frozenset({r.current_chord // N_QUALITIES}))))
            elif strict:  # the rest of the chord first, then any chord tone
                out.append(("chord_tones", self._pitch_mask(frozenset(missing or tones))))
        elif phase == Phase.PITCH and pitched:  # the duration comes next: release at the chord change
            room = self.steps_to_chord_change(row, state)
            if room is not None:
                mask = np.ones(self._size, dtype=bool)
                mask[self._duration.start:self._duration.stop] = self._duration_values <= room
                out.append(("chord_tones", mask))
        elif strict and missing and phase in (Phase.TEMPO, Phase.CHORD, Phase.DURATION):
            # the segment may not end before it has spelled the whole chord
            slot = self.pending_slot(row, state)
            end = slot[0] if slot is not None else state.bar_length
            mask = ~self._span(self._position, end)
            mask[[self.vocab.bar_id, self.vocab.eos_id]] = False
            out.append(("chord_tones", mask))
        return out

    def steps_to_chord_change(self, row: int, state: GrammarState) -> int | None:
        """Grid steps from the current onset to the next chart slot (this bar or the next, same metre assumed)
        whose chord differs from the current one; None when there is none that close."""
        r = self.rows[row]
        current = r.current_chord
        here = max(state.position, 0)
        bar = r.bar - r.chart_start
        ahead = [(pos, c) for pos, c in chord_slots(r.chart.bar(bar), state.bar_length, state.metre) if pos > here]
        ahead += [(state.bar_length + pos, c)
                  for pos, c in chord_slots(r.chart.bar(bar + 1), state.bar_length, state.metre)]
        for pos, chord in ahead:
            if chord != current:
                return pos - here
        return None

    def process(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """Density and ``chord_tones=prefer`` (:meth:`logit_bias`)."""
        bias = self.logit_bias(ctx.states, ctx.temperature)
        return logits if bias is None else logits + bias

    def restrict(self, row: int, state: GrammarState, allowed: np.ndarray,
                 probs: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Apply every control to one row of the mask (in place); one that would empty it is skipped."""
        for _name, mask in self.wanted(row, state):
            narrowed = allowed & mask
            if narrowed.any():
                allowed &= mask
            else:
                self.rows[row].counts["fallbacks"] += 1
        return allowed

    # --- logits ------------------------------------------------------------------------------------
    def logit_bias(self, states: Sequence[GrammarState], temperature: float) -> torch.Tensor | None:
        """(B, V) additive logit bias (None when nothing is biased at this step), scaled by the temperature so
        that probabilities change by exactly the documented factors: density where a note may start or the
        piece may move on (after Tempo, Chord or Duration); ``chord_tones=prefer`` on the pitches outside the
        chart's current chord where a pitch comes next (non-drum notes)."""
        if not self._has_bias:
            return None
        active = np.asarray([s.phase in (Phase.TEMPO, Phase.CHORD, Phase.DURATION) for s in states])
        pitch_rows = [row for row, s in enumerate(states) if self._prefer[row] and s.phase == Phase.VELOCITY
                      and s.program != DRUM_PROGRAM and self.rows[row].current_chord is not None
                      and self.rows[row].bar >= 0]
        if not active.any() and not pitch_rows:
            return None
        scale = float(temperature) if temperature > 0 else 1.0
        bias = self._bias * active[:, None].astype(np.float32)
        for row in pitch_rows:
            outside = ~self._pitch_mask(frozenset(chord_pitch_classes(self.rows[row].current_chord)))
            bias[row, outside] += self._tone_bias
        return torch.from_numpy(bias * scale)

    # --- report ------------------------------------------------------------------------------------
    def report(self, row: int) -> dict[str, Any]:
        """The row's resolved controls and what they did (for the piece's .json)."""
        r = self.rows[row]
        return {**r.config.resolved(self.vocab), "bars_with_chart": max(r.bar + 1, 0) if r.chart else 0,
                **r.counts}
