"""On-the-fly augmentation of REMI token arrays (numpy, vectorised): transposition and tempo shift."""

from __future__ import annotations

import numpy as np

from ..tokenizer import DRUM_PROGRAM, TokenType, Vocabulary, transpose_chord


class Augmenter:
    """Transposes pitched notes (never drums) and their chord tokens; optionally shifts every Tempo token."""

    def __init__(self, vocab: Vocabulary, transpose: int = 6, tempo_shift: int = 0) -> None:
        self.vocab = vocab
        self.transpose = int(transpose)
        self.tempo_shift = int(tempo_shift)
        self._types = vocab.types.astype(np.int16)
        r = vocab.ranges
        self._pitch = r[TokenType.PITCH]
        self._chord = r[TokenType.CHORD]
        self._tempo = r[TokenType.TEMPO]
        self._program = r[TokenType.PROGRAM]
        self._drum_id = vocab.program_id(DRUM_PROGRAM) if self._program.size else -1
        # _chord_table[s, c] = chord id of chord c moved up by s semitones (s = shift mod 12)
        n_chords = self._chord.size
        self._chord_table = np.array([[self._chord.start + transpose_chord(c, s) for c in range(n_chords)]
                                      for s in range(12)], dtype=np.int64).reshape(12, n_chords)

    def pitched_mask(self, ids: np.ndarray) -> np.ndarray:
        """Pitch tokens that belong to non-drum notes (the program resets to 0 at each Bar)."""
        types = self._types[ids]
        is_pitch = types == TokenType.PITCH
        if self._drum_id < 0:
            return is_pitch
        setter = (types == TokenType.BAR) | (types == TokenType.PROGRAM)
        last = np.maximum.accumulate(np.where(setter, np.arange(len(ids)), -1))
        in_drums = (last >= 0) & (ids[np.maximum(last, 0)] == self._drum_id)
        return is_pitch & ~in_drums

    def transpose_ids(self, ids: np.ndarray, semitones: int) -> np.ndarray:
        """Move pitched notes and chord roots by `semitones` (caller keeps pitches inside 0..127)."""
        out = ids.copy()
        if semitones == 0:
            return out
        out[self.pitched_mask(ids)] += semitones
        if self._chord.size:
            chords = (ids >= self._chord.start) & (ids < self._chord.stop)
            out[chords] = self._chord_table[semitones % 12, ids[chords] - self._chord.start]
        return out

    def __call__(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if self.transpose:
            mask = self.pitched_mask(ids)
            if mask.any():
                pitches = ids[mask] - self._pitch.start
                low = max(-self.transpose, -int(pitches.min()))
                high = min(self.transpose, 127 - int(pitches.max()))
                if high >= low:
                    ids = self.transpose_ids(ids, int(rng.integers(low, high + 1)))
        if self.tempo_shift:
            tempos = (ids >= self._tempo.start) & (ids < self._tempo.stop)
            if tempos.any():
                shift = int(rng.integers(-self.tempo_shift, self.tempo_shift + 1))
                ids = ids.copy()
                ids[tempos] = np.clip(ids[tempos] + shift, self._tempo.start, self._tempo.stop - 1)
        return ids
