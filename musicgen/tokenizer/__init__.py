"""REMI tokenizer: MIDI <-> token ids, its vocabulary, grammar, musical time and quantization.

Everything other packages use is exported here; the submodules are the tokenizer's own business (except the
`check` command, `python -m musicgen.tokenizer check`, whose comparison the tokenizer benchmark reuses).
"""

from .bars import bar_lines, midi_bar_lines, midi_ticks_per_beat
from .bins import Bins
from .chords import detect_chords, transpose_chord
from .config import TokenizerConfig
from .errors import MidiReadError
from .grammar import GrammarState, Phase, RemiGrammar, WalkStep, note_start_mask
from .midi_io import find_midi_files, load_midi
from .remi import DecodeReport, REMITokenizer
from .score import (DEFAULT_TEMPO, QNote, QuantizeReport, Score, output_ticks_per_beat, parse_time_signature,
                    score_to_midi)
from .vocab import (CHORD_QUALITIES, DRUM_PROGRAM, PITCH_CLASS_NAMES, TokenType, Vocabulary, chord_name,
                    chord_pitch_classes)

__all__ = [
    "Bins", "CHORD_QUALITIES", "DEFAULT_TEMPO", "DRUM_PROGRAM", "DecodeReport", "GrammarState", "MidiReadError",
    "PITCH_CLASS_NAMES", "Phase", "QNote", "QuantizeReport", "REMITokenizer", "RemiGrammar", "Score", "TokenType",
    "TokenizerConfig", "Vocabulary", "WalkStep", "bar_lines", "chord_name", "chord_pitch_classes", "detect_chords",
    "find_midi_files", "load_midi", "midi_bar_lines", "midi_ticks_per_beat", "note_start_mask",
    "output_ticks_per_beat", "parse_time_signature", "score_to_midi", "transpose_chord",
]
