"""Tonal memory: a decode-time prior that keeps a piece in the pitch classes it has been using.

Why: teacher-forced, the model predicts pitch classes well (a pitch-class prior barely changes its NLL on
real songs), yet its free-running continuations of POP909 prompts wander out of the prompt's key much more
than the songs do (total-variation distance of the pitch-class histograms 0.32 against the songs' 0.19,
``benchmarks/long_pieces.py``): each sampled out-of-key note is evidence, to the model, of a new key, and
the errors compound. A cache of the piece's own pitch classes, combined with the model as a product of
experts (the "neural cache" of language models), pulls the samples back towards the key the piece is in.

How: per sequence, an exponentially decayed count c of the pitch classes of its non-drum notes (the
prompt's, then the continuation's; half-life ``tonal_half_life`` notes, so a modulation the piece makes is
followed). Where a pitched note's Pitch comes next, every pitch's logit gets

    strength * log(12 (c[pc] + 1) / (sum(c) + 12))

(add-one smoothing: a pitch class never heard keeps a finite, smaller chance; a uniform history gives no
bias, so a piece without a prompt starts free). The bias is multiplied by the temperature so that the
probability ratios it imposes do not depend on it. ``tonal_memory=0`` turns it off. Drums are never biased.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["TonalMemory"]


class TonalMemory:
    """Decayed pitch-class counts of each sequence of a batch, and the pitch-logit bias they give."""

    def __init__(self, batch_size: int, pitch_ids: range, strength: float, half_life: float) -> None:
        self.strength = float(strength)
        self._lo, self._n = pitch_ids.start, len(pitch_ids)
        self._keep = 0.5 ** (1.0 / float(half_life))
        self.counts = np.zeros((batch_size, 12))
        self._classes = np.arange(self._n) % 12
        self.biased_steps = [0] * batch_size

    def observe(self, row: int, pitch_token: int) -> None:
        """Record the Pitch token of one pitched (non-drum) note of sequence ``row``."""
        self.counts[row] *= self._keep
        self.counts[row, (pitch_token - self._lo) % 12] += 1.0

    def copy_row(self, source: int, target: int) -> None:
        self.counts[target] = self.counts[source]

    def profile(self, row: int) -> np.ndarray:
        """The smoothed pitch-class distribution of the sequence's history (12,), summing to 1."""
        c = self.counts[row]
        return (c + 1.0) / (c.sum() + 12.0)

    def bias(self, rows: list[int], batch_size: int, vocab_size: int, temperature: float) -> torch.Tensor | None:
        """(B, V) additive bias on the Pitch logits of ``rows`` (those whose next token is a pitched note's
        Pitch), None when there is nothing to bias."""
        if not self.strength or not rows:
            return None
        scale = float(temperature) if temperature > 0 else 1.0
        out = np.zeros((batch_size, vocab_size), dtype=np.float32)
        for row in rows:
            log_ratio = np.log(12.0 * self.profile(row))
            out[row, self._lo:self._lo + self._n] = self.strength * scale * log_ratio[self._classes]
            self.biased_steps[row] += 1
        return torch.from_numpy(out)

    def report(self, row: int) -> dict[str, float | int | list[float]]:
        """What the .json records: the settings, how many Pitch steps were biased, the final profile."""
        return {"strength": self.strength, "half_life_notes": round(math.log(0.5) / math.log(self._keep), 3),
                "biased_steps": self.biased_steps[row],
                "final_profile": [round(float(x), 4) for x in self.profile(row)]}
