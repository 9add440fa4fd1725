"""REMI tokenizer: MIDI <-> token ids, its vocabulary, grammar and quantization."""

from .config import TokenizerConfig
from .errors import MidiReadError
from .grammar import GrammarState, Phase, RemiGrammar
from .midi_io import find_midi_files, load_midi
from .remi import DecodeReport, REMITokenizer
from .score import QNote, QuantizeReport, Score, parse_time_signature, score_to_midi
from .vocab import TokenType, Vocabulary

__all__ = [
    "DecodeReport", "GrammarState", "MidiReadError", "Phase", "QNote", "QuantizeReport", "REMITokenizer",
    "RemiGrammar", "Score", "TokenType", "TokenizerConfig", "Vocabulary", "find_midi_files", "load_midi",
    "parse_time_signature", "score_to_midi",
]
