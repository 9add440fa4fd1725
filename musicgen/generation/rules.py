"""One interface for every decode-time rule, so the generation loop is a loop over an ordered list.

Why: the tonal memory, the musician's controls, the rules of music and the repetition penalty used to have
four method shapes, each wired by hand into the session. A rule is now one :class:`DecodeRule` (the shape of
transformers' ``LogitsProcessor``, plus what a batched recurrent music sampler needs): per-row bookkeeping fed
with every accepted token (:meth:`~DecodeRule.observe`), a prompt read once and its bookkeeping copied to
the other rows of the batch (:meth:`~DecodeRule.fork`), logits in, logits out (:meth:`~DecodeRule.process`),
a per-row narrowing of the grammar mask (:meth:`~DecodeRule.restrict`), a report for the piece's .json
(:meth:`~DecodeRule.report`) and settings that may be replaced between two steps
(:meth:`~DecodeRule.replace`, what a live stream steers with). A new rule is one class, one :class:`RuleSpec`
(the settings group it reads and how it is built from it) and its settings: a session is given
``rules=DEFAULT_RULES + (spec,)`` and ``rule_settings={group: settings}``; the session does not change.

Order (:data:`DEFAULT_RULES`, the order of the tuple): the tonal memory, the controls, the guards' soft rules
(which count the probability they move, so they see the logits after the others), the rule against endless
loops (:mod:`.loops`), then the repetition penalty; the masks come from the controls, then the guards (always last: they may overrule a control).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping, Sequence

import numpy as np
import torch

if TYPE_CHECKING:
    from ..tokenizer import GrammarState, Vocabulary

__all__ = ["DEFAULT_RULES", "DecodeRule", "RuleSettings", "RuleSpec", "StepContext", "build_rules"]


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


#: the settings a session's rules read, by group: "sampling" (:class:`~.sampling.SamplingConfig`), "guards"
#: (:class:`~.guards.GuardConfig`), "controls" (one :class:`~.controls.ControlConfig`, one per sample, or None),
#: and the group of every rule added beyond these
RuleSettings = Mapping[str, Any]


@dataclass(frozen=True)
class RuleSpec:
    """How a session builds one rule: the settings group it reads, ``build(vocab, batch, settings)`` the rule for
    a batch, and ``active(settings)`` whether those settings switch it on (an inactive rule is not built, so it
    costs nothing; a session may keep a rule on anyway, as a stream does with the controls it will be steered by).

    Why a spec and not a class attribute: a rule is a plain :class:`DecodeRule` that knows nothing of the options;
    the spec is the one place that says which settings it is built from."""

    name: str
    group: str
    build: Callable[["Vocabulary", int, Any], DecodeRule]
    active: Callable[[Any], bool] = lambda settings: True

    def make(self, vocab: "Vocabulary", batch: int, settings: RuleSettings, keep: bool = False) -> DecodeRule | None:
        """The rule for a batch, or None when its settings switch it off (and ``keep`` is false)."""
        if self.group not in settings:
            raise KeyError(f"rule {self.name!r} reads the settings group {self.group!r}, which the session lacks")
        value = settings[self.group]
        return self.build(vocab, batch, value) if keep or self.active(value) else None


def _tonal(vocab: "Vocabulary", batch: int, sampling: Any) -> DecodeRule:
    from ..tokenizer import TokenType
    from .tonal import TonalMemory

    pitches = vocab.ids_of_type(TokenType.PITCH)
    return TonalMemory(batch, pitches, np.asarray(vocab.values[pitches.start:pitches.stop]), sampling.tonal_memory,
                       sampling.tonal_half_life)


def _controls(vocab: "Vocabulary", batch: int, controls: Any) -> DecodeRule:
    from .controls import ControlConfig, Controls

    return Controls(vocab, controls if controls is not None else ControlConfig(), batch)


def _controls_active(controls: Any) -> bool:
    from .controls import ControlConfig

    if controls is None:
        return False
    return controls.active if isinstance(controls, ControlConfig) else any(c.active for c in controls)


def _guards(vocab: "Vocabulary", batch: int, guards: Any) -> DecodeRule:
    from .guards import MusicGuards

    return MusicGuards(vocab, guards, batch)


def _loops(vocab: "Vocabulary", batch: int, guards: Any) -> DecodeRule:
    from .loops import LoopBreaker

    return LoopBreaker(vocab, guards.max_copied_bars, guards.copy_penalty, batch)


def _repetition(vocab: "Vocabulary", batch: int, sampling: Any) -> DecodeRule:
    from ..tokenizer import TokenType
    from .sampling import RepetitionPenalty

    return RepetitionPenalty(batch, len(vocab), vocab.ids_of_type(TokenType.PITCH),
                             int(sampling.repetition_window), float(sampling.repetition_penalty))


#: the built-in rules, in the session's order (see the module docstring)
DEFAULT_RULES: tuple[RuleSpec, ...] = (
    RuleSpec("tonal_memory", "sampling", _tonal),
    RuleSpec("controls", "controls", _controls, _controls_active),
    RuleSpec("guards", "guards", _guards, lambda guards: bool(guards.enabled)),
    RuleSpec("loops", "guards", _loops, lambda guards: bool(guards.enabled and guards.max_copied_bars)),
    RuleSpec("repetition_penalty", "sampling", _repetition),
)


def build_rules(vocab: "Vocabulary", batch: int, specs: Sequence[RuleSpec], settings: RuleSettings,
                keep: Collection[str] = ()) -> list[DecodeRule]:
    """The rules of ``specs`` for a batch, in order, each from its settings group; those named in ``keep`` are
    built even when their settings switch them off."""
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"two rules share a name: {names}")
    unknown = set(keep) - set(names)
    if unknown:
        raise ValueError(f"no rule named {', '.join(sorted(unknown))} (rules: {', '.join(names)})")
    return [rule for spec in specs if (rule := spec.make(vocab, batch, settings, spec.name in keep)) is not None]
