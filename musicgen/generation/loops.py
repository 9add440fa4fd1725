"""No endless loops: a soft rule against a run of bars that each copy the bar right before.

Why: the shipped model restates its own material (docs/form.md), but past song length it can settle into a
loop. In a 20,000-token piece (seed 5, 179 four-beat bars) 23% of the bars of its second 64-bar window copied the
bar right before, 42-50% of the later ones, in runs of 5-7 bars; POP909's songs copy the previous bar for under
2% of their bars. A loop is not form: the form measures count a restatement only 4-64 bars back.

The rule works on spans of at least four beats, as the form measures do (`musicgen.evaluation.form` lays a piece
out in bars of four beats: a 2/4 piece that loops a two-bar figure loops there too): a span is one bar, or as many
whole bars as make four beats (two of 2/4, 3/4 or 6/8). A span *copies* the span before when at least
`COPY_SIMILARITY` of its (onset, pitch) pairs (onset in grid steps from the span's start, non-drum notes) match,
|a & b| / max(|a|, |b|), as the loop measure counts it; "bar" below means such a span. Once ``max_copied_bars`` bars in a row have copied their predecessor,
the next bar is steered off the copy while it is still on its way to being one (at most a tenth of its pairs
new so far): at each Pitch slot, the pitches that would repeat the previous bar's note at this onset are made
``copy_penalty`` times less likely (a logit bias scaled by the temperature, so the odds change by exactly that).
Nothing is forced: the model picks the varied note, and a bar it still copies starts the count again.
Restatements at two or more bars' distance, what form is made of, are untouched. A prompt that loops longer
(a drum groove, a riff) raises the bound to twice its own longest run, so a loop the musician wrote may go
on.

The report (each piece's .json, "loops") counts the steps it biased, the bars it steered, the longest run of
copied bars in the continuation and the probability it moved away from the copying pitches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..tokenizer import DRUM_PROGRAM, GrammarState, Phase, TokenType, Vocabulary
from .rules import DecodeRule, StepContext

#: share of (onset, pitch) pairs two neighbouring bars share for the second to be a copy (the loop measure's)
COPY_SIMILARITY = 0.9
#: share of a bar's pairs so far that may be new while it still counts as on its way to a copy
ON_TRACK_NEW = 0.1


@dataclass
class _Row:
    previous: frozenset[tuple[int, int]] = frozenset()
    current: set[tuple[int, int]] = field(default_factory=set)
    start: int = 0  # grid step where the current span began
    bars: int = 0  # bars of the current span finished so far
    span_bars: int = 1  # bars the current span holds
    run: int = 0  # bars in a row, up to the last finished one, that copied the bar before
    prompt_run: int = 0  # longest such run inside the prompt
    in_prompt: bool = True
    longest: int = 0  # longest run in the continuation
    steps: int = 0
    steered: int = 0  # bars the rule acted in
    acted_in_bar: bool = False
    moved: float = 0.0


def copies(bar: set[tuple[int, int]] | frozenset[tuple[int, int]], before: frozenset[tuple[int, int]]) -> bool:
    """Whether ``bar`` copies ``before`` (see the module docstring); two empty bars are no copy."""
    big = max(len(bar), len(before))
    return big > 0 and len(bar & before) / big >= COPY_SIMILARITY


class LoopBreaker(DecodeRule):
    """The rule of the module docstring over a batch."""

    report_key = "loops"

    def __init__(self, vocab: Vocabulary, max_copied_bars: int, copy_penalty: float, batch_size: int) -> None:
        self.max_copied_bars, self.copy_penalty = int(max_copied_bars), float(copy_penalty)
        self._types = np.asarray(vocab.types)
        self._values = np.asarray(vocab.values)
        span = vocab.ranges[TokenType.PITCH]
        self._pitch_start, self._pitch_stop = span.start, span.stop
        self._pitch_id = {int(self._values[i]): i for i in range(span.start, span.stop)}  # MIDI pitch -> token
        self._grid = int(vocab.config.grid)  # steps per four beats
        self.rows = [_Row() for _ in range(batch_size)]

    # --- bookkeeping -------------------------------------------------------------------------------
    def observe(self, row: int, state: GrammarState, token: int, continuation: bool) -> None:
        r, kind = self.rows[row], int(self._types[token])
        if kind == TokenType.BAR:
            if state.bar_start > 0:  # a bar ended
                r.bars += 1
                if r.bars >= r.span_bars:
                    self._end_span(r, state)
            else:
                r.start = state.bar_start
            r.in_prompt = not continuation
        elif kind == TokenType.PITCH and state.program != DRUM_PROGRAM:
            r.current.add((state.step - r.start, int(self._values[token])))

    def _end_span(self, r: _Row, state: GrammarState) -> None:
        """Close the span that ends at this Bar: count it as a copy or not, and start the next one."""
        r.run = r.run + 1 if copies(r.current, r.previous) else 0
        if r.in_prompt:
            r.prompt_run = max(r.prompt_run, r.run)
        else:
            r.longest = max(r.longest, r.run)
        r.previous, r.current, r.acted_in_bar = frozenset(r.current), set(), False
        length = max(state.bar_start - r.start, 1) // max(r.bars, 1)  # the finished bars' length
        r.start, r.bars, r.span_bars = state.bar_start, 0, max(1, -(-self._grid // length))

    def fork(self, source: int, target: int) -> None:
        r = self.rows[source]
        self.rows[target] = _Row(r.previous, set(r.current), r.start, r.bars, r.span_bars, r.run, r.prompt_run,
                                 r.in_prompt)

    def bound(self, row: int) -> int:
        """Copied bars in a row allowed before the rule acts: the setting, or twice the prompt's own longest run
        (a riff the musician looped may go on as long again)."""
        return max(self.max_copied_bars, 2 * self.rows[row].prompt_run)

    def copying_pitches(self, row: int, state: GrammarState) -> list[int]:
        """The pitches that would repeat the previous bar's notes at this onset, when the bar is on its way to
        copying it after a run of copies at the bound (else none)."""
        r = self.rows[row]
        if not self.max_copied_bars or r.in_prompt or r.run < self.bound(row) or state.program == DRUM_PROGRAM:
            return []
        if len(r.current - r.previous) > ON_TRACK_NEW * max(len(r.previous), 1):
            return []
        onset = state.step - r.start
        return [p for (at, p) in r.previous if at == onset and (at, p) not in r.current]

    # --- logits --------------------------------------------------------------------------------------
    def process(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if not self.max_copied_bars or self.copy_penalty <= 1.0:
            return logits
        bias = None
        scale = math.log(self.copy_penalty) / max(ctx.temperature, 1e-6) if ctx.temperature > 0 else float("inf")
        for row, state in enumerate(ctx.states):
            if ctx.done[row] or state.phase != Phase.VELOCITY:  # the next token is a Pitch
                continue
            pitches = self.copying_pitches(row, state)
            if not pitches:
                continue
            ids = sorted(self._pitch_id[p] for p in pitches if p in self._pitch_id)
            if bias is None:
                bias = torch.zeros_like(logits)
            bias[row, ids] = -min(scale, 1e4)
            r = self.rows[row]
            r.steps += 1
            if not r.acted_in_bar:
                r.steered, r.acted_in_bar = r.steered + 1, True
            pitch_logits = logits[row, self._pitch_start:self._pitch_stop].float()
            before = torch.softmax(pitch_logits, dim=-1)[[i - self._pitch_start for i in ids]].sum()
            after = torch.softmax(pitch_logits + bias[row, self._pitch_start:self._pitch_stop], dim=-1)
            r.moved += float(before - after[[i - self._pitch_start for i in ids]].sum())
        return logits if bias is None else logits + bias

    def report(self, row: int) -> dict[str, Any]:
        r = self.rows[row]
        return {"max_copied_bars": self.max_copied_bars, "copy_penalty": self.copy_penalty,
                "bound": self.bound(row), "steps_biased": r.steps, "bars_steered": r.steered,
                "longest_copied_run": r.longest, "probability_moved": round(r.moved, 4)}

    def replace(self, **settings: Any) -> None:
        unknown = sorted(set(settings) - {"max_copied_bars", "copy_penalty"})
        if unknown:
            raise ValueError(f"loops: no setting {unknown}")
        self.max_copied_bars = int(settings.get("max_copied_bars", self.max_copied_bars))
        self.copy_penalty = float(settings.get("copy_penalty", self.copy_penalty))
