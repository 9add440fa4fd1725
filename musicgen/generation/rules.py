"""One interface for every decode-time rule, so the generation loop is a loop over an ordered list.

Why: the tonal memory, the musician's controls, the rules of music and the repetition penalty used to have
four method shapes, each wired by hand into the session. A rule is now one :class:`DecodeRule` (the shape of
transformers' ``LogitsProcessor``, plus what a batched recurrent music sampler needs): per-row bookkeeping fed
with every accepted token (:meth:`~DecodeRule.observe`), a prompt read once and its bookkeeping copied to
the other rows of the batch (:meth:`~DecodeRule.fork`), logits in, logits out (:meth:`~DecodeRule.process`),
a per-row narrowing of the grammar mask (:meth:`~DecodeRule.restrict`), a report for the piece's .json
(:meth:`~DecodeRule.report`) and settings that may be replaced between two steps
(:meth:`~DecodeRule.replace`, what a live stream steers with). A new rule is one class and one entry in
:func:`default_rules`; the session does not change.

Order (:func:`default_rules`, the order of the list): the tonal memory, the controls, the guards' soft rules
(which count the probability they move, so they see the logits after the others), then the repetition
penalty; the masks come from the controls, then the guards (always last: they may overrule a control).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from ..tokenizer import GrammarState, Vocabulary

__all__ = ["DecodeRule", "StepContext", "RuleFactory", "default_rules"]


@dataclass
class StepContext:
    """What every rule sees at one sampling step: each row's grammar state (after its last token), which rows
    are finished, and the sampling temperature (biases are scaled by it so the odds they set do not depend on it)."""

    states: Sequence["GrammarState"]
    done: Sequence[bool]
    temperature: float


class DecodeRule:
    """A decode-time rule over a batch of sequences (see the module docstring). Every method has a neutral
    default, so a rule implements only what it does."""

    #: the key of the rule's report in each piece's .json (None: the rule reports nothing)
    report_key: str | None = None

    def observe(self, row: int, state: "GrammarState", token: int, continuation: bool) -> None:
        """Record an accepted ``token`` of sequence ``row`` (``state``: the grammar state after it); prompt tokens
        come with ``continuation=False`` (all fed to row 0, then :meth:`fork`\\ ed)."""

    def fork(self, source: int, target: int) -> None:
        """Make row ``target``'s bookkeeping a copy of row ``source``'s (after the prompt)."""

    def process(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """(B, V) logits -> (B, V) logits (a new tensor when changed)."""
        return logits

    def restrict(self, row: int, state: "GrammarState", allowed: np.ndarray,
                 probs: Callable[[np.ndarray], np.ndarray] | None) -> None:
        """Narrow one unfinished row of the mask in place (never to nothing). ``probs(allowed)``: the sampling
        distribution given a mask, for rules that count the probability they remove."""

    def report(self, row: int) -> dict[str, Any]:
        return {}

    def replace(self, **settings: Any) -> None:
        """Replace some of the rule's settings between two steps, keeping its bookkeeping."""
        raise ValueError(f"{type(self).__name__} has no settings that can change while generating")


#: builds one rule for a batch (vocabulary, batch size), or None when the rule is off
RuleFactory = Callable[["Vocabulary", int], "DecodeRule | None"]


def default_rules(sampling: Any, guards: Any, controls: Any) -> list[RuleFactory]:
    """The session's rules, in order, from its settings (:class:`~.sampling.SamplingConfig`,
    :class:`~.guards.GuardConfig`, one :class:`~.controls.ControlConfig` or one per sample, or None)."""
    from ..tokenizer import TokenType
    from .controls import ControlConfig, Controls
    from .guards import MusicGuards
    from .sampling import RepetitionPenalty
    from .tonal import TonalMemory

    def tonal(vocab: "Vocabulary", batch: int) -> DecodeRule:
        pitches = vocab.ids_of_type(TokenType.PITCH)
        return TonalMemory(batch, pitches, np.asarray(vocab.values[pitches.start:pitches.stop]),
                           sampling.tonal_memory, sampling.tonal_half_life)

    def control(vocab: "Vocabulary", batch: int) -> DecodeRule | None:
        active = controls is not None and (controls.active if isinstance(controls, ControlConfig)
                                           else any(c.active for c in controls))
        return Controls(vocab, controls, batch) if active else None

    def guard(vocab: "Vocabulary", batch: int) -> DecodeRule | None:
        return MusicGuards(vocab, guards, batch) if guards.enabled else None

    def repetition(vocab: "Vocabulary", batch: int) -> DecodeRule:
        return RepetitionPenalty(batch, len(vocab), vocab.ids_of_type(TokenType.PITCH),
                                 int(sampling.repetition_window), float(sampling.repetition_penalty))

    return [tonal, control, guard, repetition]
