"""Musical time <-> seconds, for token streams (stop after N seconds, cut a prompt) and for MIDI files.

Tokens carry time only as grid steps plus Tempo tokens, so `TokenClock` follows the same grammar walk the
decoder does: the tempo is 120 BPM until the first Tempo token (what `score_to_midi` writes for a score
without tempo), and a Tempo token changes it from its own position on.
"""

from __future__ import annotations

from dataclasses import dataclass

import miditoolkit
import numpy as np

from ..tokenizer import DEFAULT_TEMPO, Bins, GrammarState, Phase, TokenizerConfig, midi_bar_lines


@dataclass
class TokenClock:
    """Seconds elapsed at any grid step of a token stream, updated token by token."""

    steps_per_quarter: int
    anchor_step: int = 0
    anchor_seconds: float = 0.0
    bpm: float = DEFAULT_TEMPO

    @classmethod
    def for_config(cls, config: TokenizerConfig) -> "TokenClock":
        return cls(config.steps_per_quarter)

    def seconds_at(self, step: int) -> float:
        return self.anchor_seconds + (step - self.anchor_step) * 60.0 / (self.bpm * self.steps_per_quarter)

    def set_tempo(self, step: int, bpm: float) -> None:
        self.anchor_seconds = self.seconds_at(step)
        self.anchor_step = step
        self.bpm = bpm

    def copy(self) -> "TokenClock":
        return TokenClock(self.steps_per_quarter, self.anchor_step, self.anchor_seconds, self.bpm)


def event_step(state: GrammarState) -> int | None:
    """Grid step where the token that produced `state` happens, for Bar and Position tokens (else None)."""
    if state.phase == Phase.BAR:
        return state.bar_start
    if state.phase == Phase.POSITION:
        return state.step
    return None


def follow_tempo(clock: TokenClock, state: GrammarState, token_value: int, bins: Bins) -> None:
    """Update `clock` after a token was accepted into `state` (only Tempo tokens change it)."""
    if state.phase == Phase.TEMPO:
        clock.set_tempo(state.step, bins.tempo_of_bin[token_value])


# --- MIDI files ----------------------------------------------------------------------------------------
def tick_to_seconds(midi: miditoolkit.MidiFile, ticks: np.ndarray) -> np.ndarray:
    """Seconds of `ticks` under the file's tempo map (120 BPM before the first tempo change)."""
    tpb = midi.ticks_per_beat or 480
    changes = sorted(midi.tempo_changes, key=lambda t: t.time)
    anchors_tick, anchors_sec, bpms = [0], [0.0], [DEFAULT_TEMPO]
    for change in changes:
        t = int(change.time)
        sec = anchors_sec[-1] + (t - anchors_tick[-1]) * 60.0 / (bpms[-1] * tpb)
        if t == anchors_tick[-1]:
            bpms[-1] = float(change.tempo)
            continue
        anchors_tick.append(t)
        anchors_sec.append(sec)
        bpms.append(float(change.tempo))
    ticks = np.asarray(ticks, dtype=np.float64)
    idx = np.searchsorted(np.asarray(anchors_tick), ticks, side="right") - 1
    idx = idx.clip(0)
    a_t, a_s, bpm = (np.asarray(x)[idx] for x in (anchors_tick, anchors_sec, bpms))
    return a_s + (ticks - a_t) * 60.0 / (bpm * tpb)


def bar_ticks(midi: miditoolkit.MidiFile, end_tick: int) -> np.ndarray:
    """Ticks of every bar line from 0 through the first one at or after `end_tick` (the tokenizer's bar lines,
    `musicgen.tokenizer.midi_bar_lines`: a metre change inside a bar takes effect at the next bar line)."""
    lines = midi_bar_lines(midi, end_tick)
    through = max(int(np.searchsorted(lines, end_tick, side="left")) + 1, 2)
    return np.round(lines[:through]).astype(np.int64)


def midi_end_tick(midi: miditoolkit.MidiFile) -> int:
    return max((n.end for inst in midi.instruments for n in inst.notes), default=0)


def midi_seconds(midi: miditoolkit.MidiFile) -> float:
    """Length in seconds up to the end of the last note."""
    return float(tick_to_seconds(midi, np.asarray([midi_end_tick(midi)]))[0])
