"""The quantized score: what REMI tokens can express exactly, and the documented `quantize` that gets there.

`quantize` is the tokenizer's contract with the user. It may only
- snap note onsets, tempo changes and time-signature changes to the grid,
- bin durations (nearest duration bin, at least one step), velocities and tempi (clamped to the bin range),
- move a time-signature change that falls inside a bar to the next bar line, and replace a metre the grid
  cannot represent (bar not a whole number of steps, or longer than four whole notes) by 4/4,
- map every non-drum program to 0 when `programs` is off,
- drop what is not notes, tempo or metre: pitch bends, control changes (sustain pedal included), program
  changes other than each track's program, lyrics, markers, key signatures, and tempo/metre events after
  the bar of the last note onset.
It never drops or merges notes: same-pitch duplicates and overlapping notes are all kept.
`QuantizeReport` counts everything that was dropped or replaced, so the check command can say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import miditoolkit

from .bars import bar_lines
from .bins import Bins
from .chords import detect_chords
from .config import TokenizerConfig
from .errors import MidiReadError
from .vocab import DRUM_PROGRAM, chord_name, supported_time_signatures

DEFAULT_TEMPO = 120.0
#: the longest span a MIDI file may have, in whole notes (8,192 bars of 4/4: 4.5 hours at 120 BPM). The work of
#: quantizing and tokenizing grows with the span (every bar is a Bar token, every half bar a chord segment), not
#: with the file's size: a 471-byte file of 40 notes with huge gaps once asked for 2.7 billion bars.
MAX_WHOLE_NOTES = 8192


@dataclass(frozen=True, order=True)
class QNote:
    """A note on the grid. `duration` is a duration-bin value in steps, `velocity` a velocity-bin index,
    `program` 0..127 or 128 for drums."""

    onset: int
    program: int
    pitch: int
    duration: int
    velocity: int


@dataclass(frozen=True)
class Bar:
    start: int
    length: int
    numerator: int
    denominator: int


@dataclass
class Score:
    """Quantized music. `tempos` are (step, tempo bin); `chords` are (step, chord index) and carry no notes."""

    bars: list[Bar] = field(default_factory=list)
    notes: list[QNote] = field(default_factory=list)
    tempos: list[tuple[int, int]] = field(default_factory=list)
    chords: list[tuple[int, int]] = field(default_factory=list)

    @property
    def time_signatures(self) -> list[tuple[int, int, int]]:
        """(bar start step, numerator, denominator) at the first bar and wherever the metre changes."""
        result: list[tuple[int, int, int]] = []
        for bar in self.bars:
            if not result or result[-1][1:] != (bar.numerator, bar.denominator):
                result.append((bar.start, bar.numerator, bar.denominator))
        return result


@dataclass
class QuantizeReport:
    """What quantization dropped or replaced (besides grid snapping and binning, which are always done)."""

    notes_in: int = 0
    pitch_bends: int = 0
    control_changes: int = 0
    lyrics_and_markers: int = 0
    programs_merged: int = 0
    unsupported_time_signatures: list[str] = field(default_factory=list)
    events_after_end: int = 0

    def losses(self) -> list[str]:
        """Human-readable list of what was dropped or replaced (empty when nothing was)."""
        out = []
        if self.pitch_bends:
            out.append(f"{self.pitch_bends} pitch bends dropped")
        if self.control_changes:
            out.append(f"{self.control_changes} control changes dropped")
        if self.programs_merged:
            out.append(f"{self.programs_merged} notes moved to program 0 (programs=false)")
        if self.unsupported_time_signatures:
            out.append(f"metre {','.join(sorted(set(self.unsupported_time_signatures)))} replaced by 4/4")
        return out


def span_message(whole_notes: float) -> str:
    """Why a file that spans `whole_notes` (more than `MAX_WHOLE_NOTES`) is refused, in one line."""
    return (f"its last note starts {whole_notes:,.0f} whole notes (bars of 4/4) in, beyond the limit of "
            f"{MAX_WHOLE_NOTES:,} (hours of music): the file is damaged or crafted, and its empty bars alone "
            "would take gigabytes")


def midi_span_whole_notes(midi: miditoolkit.MidiFile) -> float:
    """Where the last note of `midi` starts, in whole notes (cheap: no bar is laid out)."""
    tpb = midi.ticks_per_beat or 480
    last = max((int(n.start) for inst in midi.instruments for n in inst.notes), default=0)
    return max(last, 0) / (4 * tpb)


def parse_time_signature(text: str) -> tuple[int, int]:
    """'3/4' -> (3, 4), with a clear error for anything else."""
    try:
        num, den = (int(x) for x in str(text).split("/"))
        if num <= 0 or den <= 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"time signature must look like '3/4', got {text!r}") from None
    return num, den


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def grid_step(tick: float, ticks_per_step: float) -> int:
    """The grid step a note starting at ``tick`` is placed on (rounded half up, never before 0): the one rule
    both quantization and infilling's choice of which notes a bar holds use."""
    return max(_round_half_up(tick / ticks_per_step), 0)


class Quantizer:
    """Turns a `miditoolkit.MidiFile` into a `Score` (see the module docstring for the exact rules)."""

    def __init__(self, config: TokenizerConfig) -> None:
        self.config = config
        self.bins = Bins(config)
        self._supported = set(supported_time_signatures(config))

    def bar_steps(self, numerator: int, denominator: int) -> int:
        return int(Fraction(self.config.grid * numerator, denominator))

    def _metre(self, numerator: int, denominator: int, report: QuantizeReport) -> tuple[int, int]:
        if (numerator, denominator) in self._supported:
            return numerator, denominator
        # An equivalent spelling with a supported denominator keeps the bar length (e.g. 4/32 -> 1/8).
        length = Fraction(numerator, denominator)
        for den in (2, 4, 8, 16):
            num = length * den
            if num.denominator == 1 and (int(num), den) in self._supported:
                return int(num), den
        report.unsupported_time_signatures.append(f"{numerator}/{denominator}")
        return 4, 4

    def quantize(self, midi: miditoolkit.MidiFile,
                 time_signature: tuple[int, int] | None = None) -> tuple[Score, QuantizeReport]:
        """Quantize `midi`; `time_signature` overrides the file's own metre (e.g. POP909's wrong 1/4)."""
        cfg = self.config
        report = QuantizeReport()
        tpb = midi.ticks_per_beat or 480
        ticks_per_step = tpb / cfg.steps_per_quarter

        notes: list[QNote] = []
        for inst in midi.instruments:
            program = DRUM_PROGRAM if inst.is_drum else int(inst.program)
            if not cfg.programs and program != 0:
                report.programs_merged += len(inst.notes)
                program = 0
            report.pitch_bends += len(inst.pitch_bends)
            report.control_changes += len(inst.control_changes)
            for note in inst.notes:
                start, end = int(note.start), int(note.end)
                onset = grid_step(start, ticks_per_step)
                duration = self.bins.duration_value(max(end - start, 0) / ticks_per_step)
                notes.append(QNote(onset, program, int(note.pitch), duration,
                                   self.bins.velocity_bin(int(note.velocity))))
        notes.sort()
        report.notes_in = len(notes)
        if notes and notes[-1].onset >= MAX_WHOLE_NOTES * cfg.grid:
            raise MidiReadError(getattr(midi, "filename", None) or "MIDI file", span_message(
                notes[-1].onset / cfg.grid))
        report.lyrics_and_markers = len(midi.lyrics) + len(midi.markers)
        if not notes:
            report.events_after_end = len(midi.tempo_changes) + len(midi.time_signature_changes)
            return Score(), report

        # Metre: a change takes effect at the first bar line at or after its (grid-snapped) position.
        if time_signature is not None:
            raw_ts = [(0, *time_signature)]
        else:
            raw_ts = sorted(((max(_round_half_up(ts.time / ticks_per_step), 0), int(ts.numerator),
                              int(ts.denominator)) for ts in midi.time_signature_changes), key=lambda t: t[0])
        if not raw_ts or raw_ts[0][0] > 0:
            raw_ts.insert(0, (0, 4, 4))
        metres = [(step, *self._metre(num, den, report)) for step, num, den in raw_ts]

        bars = [Bar(start, stop - start, num, den)
                for start, stop, num, den in bar_lines(metres, self.bar_steps, notes[-1].onset)]
        end = bars[-1].start + bars[-1].length
        report.events_after_end += sum(1 for step, _, _ in metres if step >= end)

        # Tempo: the MIDI default (120) holds until the first tempo event; the last event on a step wins;
        # repeated bins are not changes.
        tempo_events = [(0, DEFAULT_TEMPO)]
        tempo_events += sorted(((max(_round_half_up(t.time / ticks_per_step), 0), float(t.tempo))
                                for t in midi.tempo_changes), key=lambda t: t[0])
        per_step: dict[int, int] = {}
        for step, bpm in tempo_events:
            if step >= end:
                report.events_after_end += 1
                continue
            per_step[step] = self.bins.tempo_bin(bpm)
        tempos: list[tuple[int, int]] = []
        for step in sorted(per_step):
            if not tempos or tempos[-1][1] != per_step[step]:
                tempos.append((step, per_step[step]))

        chords: list[tuple[int, int]] = []
        if cfg.chords:
            segments = []
            for bar in bars:
                parts = 2 if bar.numerator % 2 == 0 and bar.length % 2 == 0 else 1
                size = bar.length // parts
                segments += [(bar.start + i * size, bar.start + (i + 1) * size) for i in range(parts)]
            pitched = [(n.onset, n.duration, n.pitch) for n in notes if n.program != DRUM_PROGRAM]
            chords = detect_chords(pitched, segments)
        return Score(bars, notes, tempos, chords), report


def output_ticks_per_beat(config: TokenizerConfig) -> int:
    """480 when the grid divides it (the common case), else a resolution the grid divides exactly."""
    return 480 if 480 % config.steps_per_quarter == 0 else config.steps_per_quarter * 120


def score_to_midi(score: Score, config: TokenizerConfig) -> miditoolkit.MidiFile:
    """Write a `Score` as MIDI: one track per program (drums on their own), tempo and metre maps, and the
    chord tokens as markers so a DAW shows them."""
    bins = Bins(config)
    midi = miditoolkit.MidiFile(ticks_per_beat=output_ticks_per_beat(config))
    tps = midi.ticks_per_beat // config.steps_per_quarter
    tracks: dict[int, miditoolkit.Instrument] = {}
    for note in score.notes:
        track = tracks.get(note.program)
        if track is None:
            is_drum = note.program == DRUM_PROGRAM
            track = miditoolkit.Instrument(program=0 if is_drum else note.program, is_drum=is_drum,
                                           name="Drums" if is_drum else f"Program {note.program}")
            tracks[note.program] = track
        start = note.onset * tps
        track.notes.append(miditoolkit.Note(velocity=bins.velocity_of_bin[note.velocity], pitch=note.pitch,
                                            start=start, end=start + note.duration * tps))
    midi.instruments = [tracks[p] for p in sorted(tracks)]
    for start, num, den in score.time_signatures:
        midi.time_signature_changes.append(miditoolkit.TimeSignature(num, den, start * tps))
    tempos = score.tempos or [(0, bins.tempo_bin(DEFAULT_TEMPO))]
    for step, b in tempos:
        midi.tempo_changes.append(miditoolkit.TempoChange(bins.tempo_of_bin[b], step * tps))
    for step, c in score.chords:
        midi.markers.append(miditoolkit.Marker(f"Chord_{chord_name(c)}", step * tps))
    last = max((n.end for t in midi.instruments for n in t.notes), default=0)
    midi.max_tick = max(last, (score.bars[-1].start + score.bars[-1].length) * tps if score.bars else 0)
    return midi
