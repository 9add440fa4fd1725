"""REMI encoding and decoding: `decode(encode(m))` reproduces `quantize(m)` note for note."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Any

import miditoolkit

from .config import TokenizerConfig
from .grammar import GrammarState, Phase, RemiGrammar
from .errors import MidiReadError
from .midi_io import load_midi
from .score import Bar, QNote, QuantizeReport, Quantizer, Score, score_to_midi
from .vocab import TokenType, Vocabulary

MidiLike = miditoolkit.MidiFile | str | Path


@dataclass
class DecodeReport:
    """How well an id sequence followed the grammar: `skipped` tokens were not allowed where they stood."""

    n_tokens: int = 0
    skipped: int = 0
    notes: int = 0

    @property
    def skipped_share(self) -> float:
        return self.skipped / self.n_tokens if self.n_tokens else 0.0


class REMITokenizer:
    """MIDI <-> REMI token ids.

    Token order inside a bar: `Bar [TimeSig] (Position [Tempo] [Chord] ([Program] Velocity Pitch Duration)*)*`.
    TimeSig appears at the first bar when the piece is not in 4/4 and wherever the metre changes; Tempo at the
    start and wherever the (binned) tempo changes; Program only when a note's program differs from the
    current one (0 at each Bar), so single-piano corpora carry no Program tokens at all.
    """

    def __init__(self, config: TokenizerConfig | Mapping[str, Any] | None = None) -> None:
        if not isinstance(config, TokenizerConfig):
            config = TokenizerConfig.from_mapping(config)
        self.config = config
        self.vocab = Vocabulary(config)
        self.grammar = RemiGrammar(self.vocab)
        self.quantizer = Quantizer(config)

    # --- quantization ----------------------------------------------------------------------------------
    def quantize(self, midi: MidiLike, time_signature: tuple[int, int] | None = None
                 ) -> tuple[Score, QuantizeReport]:
        """The tokenizer's documented quantization (see `musicgen.tokenizer.score`)."""
        if isinstance(midi, miditoolkit.MidiFile):
            return self.quantizer.quantize(midi, time_signature)
        path = midi
        midi = load_midi(path)
        try:
            return self.quantizer.quantize(midi, time_signature)
        except MidiReadError as exc:  # too long a span: name the file
            raise MidiReadError(path, exc.cause) from None

    # --- encoding --------------------------------------------------------------------------------------
    def encode(self, midi: MidiLike, time_signature: tuple[int, int] | None = None) -> list[int]:
        """Token ids of a MIDI file or object: BOS, the bars, EOS."""
        score, _ = self.quantize(midi, time_signature)
        return self.encode_score(score)

    def encode_score(self, score: Score) -> list[int]:
        v = self.vocab
        ids = [v.bos_id]
        notes, tempos, chords = score.notes, score.tempos, score.chords
        ni = ti = ci = 0
        metre = (4, 4)
        for bar in score.bars:
            ids.append(v.bar_id)
            if (bar.numerator, bar.denominator) != metre:
                metre = (bar.numerator, bar.denominator)
                ids.append(v.time_signature_id(*metre))
            end = bar.start + bar.length
            program = 0
            while True:
                # Next grid step in this bar that has any event.
                candidates = []
                if ni < len(notes) and notes[ni].onset < end:
                    candidates.append(notes[ni].onset)
                if ti < len(tempos) and tempos[ti][0] < end:
                    candidates.append(tempos[ti][0])
                if ci < len(chords) and chords[ci][0] < end:
                    candidates.append(chords[ci][0])
                if not candidates:
                    break
                step = min(candidates)
                ids.append(v.id_of(TokenType.POSITION, step - bar.start))
                if ti < len(tempos) and tempos[ti][0] == step:
                    ids.append(v.id_of(TokenType.TEMPO, tempos[ti][1]))
                    ti += 1
                if ci < len(chords) and chords[ci][0] == step:
                    ids.append(v.id_of(TokenType.CHORD, chords[ci][1]))
                    ci += 1
                while ni < len(notes) and notes[ni].onset == step:
                    note = notes[ni]
                    if note.program != program:
                        program = note.program
                        ids.append(v.program_id(program))
                    ids.append(v.id_of(TokenType.VELOCITY, note.velocity))
                    ids.append(v.id_of(TokenType.PITCH, note.pitch))
                    ids.append(v.duration_id(note.duration))
                    ni += 1
        ids.append(v.eos_id)
        return ids

    # --- decoding --------------------------------------------------------------------------------------
    def decode_to_score(self, ids: Iterable[int]) -> tuple[Score, DecodeReport]:
        """Walk `ids` with the grammar; disallowed tokens are skipped (see `musicgen.tokenizer.grammar`)."""
        grammar = self.grammar
        v = self.vocab
        state: GrammarState = grammar.initial_state()
        score = Score()
        report = DecodeReport()
        pending = 0  # tokens of a note in progress, skipped if it never gets its Duration
        for _, token, state, allowed in grammar.walk(ids):
            report.n_tokens += 1
            if not allowed:
                report.skipped += 1
                continue
            phase = state.phase
            if phase == Phase.BAR:
                score.bars.append(Bar(state.bar_start, state.bar_length, *state.metre))
            elif phase == Phase.TIME_SIG:
                score.bars[-1] = Bar(state.bar_start, state.bar_length, *state.metre)
            elif phase == Phase.TEMPO:
                if not score.tempos or score.tempos[-1][1] != int(v.values[token]):
                    score.tempos.append((state.step, int(v.values[token])))
            elif phase == Phase.CHORD:
                score.chords.append((state.step, int(v.values[token])))
            elif phase in (Phase.PROGRAM, Phase.VELOCITY, Phase.PITCH):
                pending += 1
            elif phase == Phase.DURATION:
                score.notes.append(QNote(state.step, state.program, state.pitch, int(v.values[token]),
                                         state.velocity))
                pending = 0
        if state.phase in (Phase.PROGRAM, Phase.VELOCITY, Phase.PITCH):
            report.skipped += pending
        score.notes.sort()
        report.notes = len(score.notes)
        return score, report

    def decode_with_report(self, ids: Iterable[int]) -> tuple[miditoolkit.MidiFile, DecodeReport]:
        score, report = self.decode_to_score(ids)
        return score_to_midi(score, self.config), report

    def decode(self, ids: Iterable[int]) -> miditoolkit.MidiFile:
        """MIDI from any id sequence; never raises on malformed input (see `decode_to_score`)."""
        return self.decode_with_report(ids)[0]
