"""Tonal memory: a decode-time prior that keeps a continuation in the pitch classes of its prompt.

Why: teacher-forced, the model predicts pitch classes well (a pitch-class prior barely changes its NLL on
real songs), yet its free-running continuations of POP909 prompts wander out of the prompt's key much more
than the songs do (total-variation distance of the pitch-class histograms 0.32 against the songs' 0.19,
``benchmarks/long_pieces.py``): each sampled out-of-key note is evidence, to the model, of a new key, and
the errors compound. The prompt is what the musician gave; its pitch-class profile, combined with the model
as a product of experts, pulls the samples back towards the prompt's key.

How: the prompt's non-drum notes give an exponentially weighted pitch-class count c (a note
``tonal_half_life`` notes before the prompt's end weighs half as much as its last one, so a prompt that
modulates is continued in its latest key). Where a pitched note's Pitch comes next in the continuation,
every pitch's logit gets

    strength * log(12 (c[pc] + 1) / (sum(c) + 12))

(add-one smoothing: a pitch class the prompt never played keeps a finite, smaller chance). The profile is
the prompt's alone and stays fixed: fed with the piece's own notes the prior reinforces itself, and
20,000-token pieces lost pitch-class variety (docs/decoding.md). Without a prompt there is no profile and no bias. The bias is
multiplied by the temperature so that the probability ratios it imposes do not depend on it.
``tonal_memory=0`` turns it off; drums are never biased. Strength 1 is the plain product of the two experts.
Why the default strength is what it is (it keeps the key as well as the songs do; a stronger memory thins the
notes out) is measured in docs/decoding.md, where the numbers live.
"""

from __future__ import annotations

import math

from typing import Any

import numpy as np
import torch

from ..tokenizer import DRUM_PROGRAM, GrammarState, Phase
from .rules import DecodeRule, StepContext

__all__ = ["TonalMemory"]


class TonalMemory(DecodeRule):
    """The prompt's decayed pitch-class counts for each sequence of a batch, and the pitch-logit bias they give."""

    report_key = "tonal_memory"

    def __init__(self, batch_size: int, pitch_ids: range, pitch_values: np.ndarray, strength: float,
                 half_life: float) -> None:
        """``pitch_ids``: the vocabulary's Pitch tokens; ``pitch_values``: the MIDI pitch of each of them."""
        self.strength = float(strength)
        self._lo, self._n = pitch_ids.start, len(pitch_ids)
        self._keep = 0.5 ** (1.0 / float(half_life))
        self.counts = np.zeros((batch_size, 12))
        self._classes = np.asarray(pitch_values, dtype=np.int64) % 12
        self.biased_steps = [0] * batch_size

    def observe(self, row: int, state: GrammarState, token: int, continuation: bool) -> None:
        """Remember the prompt's pitched notes (the continuation's are not: see the module docstring)."""
        if not continuation and self._lo <= token < self._lo + self._n and state.program != DRUM_PROGRAM:
            self.add_note(row, token)

    def add_note(self, row: int, pitch_token: int) -> None:
        """Record the Pitch token of one pitched (non-drum) prompt note (in order) for sequence ``row``."""
        self.counts[row] *= self._keep
        self.counts[row, self._classes[pitch_token - self._lo]] += 1.0

    def fork(self, source: int, target: int) -> None:
        self.counts[target] = self.counts[source]

    def profile(self, row: int) -> np.ndarray:
        """The smoothed pitch-class distribution of the sequence's prompt (12,), summing to 1."""
        c = self.counts[row]
        return (c + 1.0) / (c.sum() + 12.0)

    def bias(self, rows: list[int], batch_size: int, vocab_size: int, temperature: float) -> torch.Tensor | None:
        """(B, V) additive bias on the Pitch logits of ``rows`` (those whose next token is a pitched note's
        Pitch), None when there is nothing to bias (off, no such row, or no prompt note to remember)."""
        if not self.strength or not rows or not self.counts.any():
            return None
        scale = float(temperature) if temperature > 0 else 1.0
        out = np.zeros((batch_size, vocab_size), dtype=np.float32)
        for row in rows:
            log_ratio = np.log(12.0 * self.profile(row))
            out[row, self._lo:self._lo + self._n] = self.strength * scale * log_ratio[self._classes]
            self.biased_steps[row] += 1
        return torch.from_numpy(out)

    def process(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The bias, where a pitched note's Pitch comes next."""
        rows = [row for row, s in enumerate(ctx.states)
                if not ctx.done[row] and s.phase == Phase.VELOCITY and s.program != DRUM_PROGRAM]
        bias = self.bias(rows, logits.shape[0], logits.shape[1], ctx.temperature)
        return logits if bias is None else logits + bias

    def replace(self, **settings: Any) -> None:
        """``strength`` (``tonal_memory``) may change between two steps; the remembered prompt stays."""
        unknown = set(settings) - {"strength"}
        if unknown:
            raise ValueError(f"tonal memory: cannot change {sorted(unknown)} while generating")
        self.strength = float(settings["strength"])

    def report(self, row: int) -> dict[str, float | int | list[float]]:
        """What the .json records: the settings, how many Pitch steps were biased, the prompt's profile."""
        return {"strength": self.strength, "half_life_notes": round(math.log(0.5) / math.log(self._keep), 3),
                "biased_steps": self.biased_steps[row],
                "prompt_profile": [round(float(x), 4) for x in self.profile(row)]}
