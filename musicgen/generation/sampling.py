"""Next-token sampling over logits: the one implementation used by generation, evaluation and benchmarks.

Order of operations for a batch of logits (B, V):
1. the session's decode-time rules (:mod:`.rules`): the tonal memory, the density control, the guards' soft
   rules, then the repetition guard, :class:`RepetitionPenalty` (off at `repetition_penalty=1`): the logits of the pitch tokens that occur among the last
   `repetition_window` *pitch* tokens of a sequence are divided by `repetition_penalty` when positive and
   multiplied by it when negative (the CTRL rule). Only pitches are guarded because REMI repeats
   structural tokens (Bar, Position, Velocity, Duration) legitimately all the time; what sounds broken is a
   model stuck on the same few notes. Chords and octaves still appear: it is a penalty, not a ban;
2. grammar mask: tokens the REMI grammar does not allow get -inf *before* any filtering, so top-k/top-p
   choose among allowed tokens only and a sample can never be skipped by the decoder;
3. temperature (0 = greedy argmax), then top-k, then top-p (nucleus; the most likely token always
   survives), then one multinomial draw with the caller's `torch.Generator` (same seed -> same tokens).

Everything runs in float32 on the logits' device; pass a generator on that device (CPU in generation,
so results do not depend on where the model runs).
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..config import check_float, check_int
from .rules import DecodeRule, StepContext


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings (see the module docstring for what each does and in which order)."""

    temperature: float = 1.0  # the model's own distribution (why, and what 0.9 did: docs/form.md, round 4)
    top_k: int = 0  # 0 = off
    top_p: float = 0.95  # 1.0 = off (why 0.95: docs/decoding.md)
    repetition_penalty: float = 1.0  # 1.0 = off
    repetition_window: int = 16  # last N pitch tokens of each sequence
    tonal_memory: float = 0.75  # strength of the prompt's pitch-class prior on continuations (tonal.py); 0 = off
    tonal_half_life: float = 256.0  # a prompt note this many notes before its end weighs half

    def __post_init__(self) -> None:
        """Validated (and typed: `top_k="3"` becomes 3) here, once, for the API, the CLI and the studio."""
        for name, value in (
                ("temperature", check_float("temperature", self.temperature, minimum=0.0)),
                ("top_k", check_int("top_k", self.top_k, minimum=0)),
                ("top_p", check_float("top_p", self.top_p, minimum=0.0, maximum=1.0, exclusive_min=True)),
                ("repetition_penalty", check_float("repetition_penalty", self.repetition_penalty, minimum=1.0)),
                ("repetition_window", check_int("repetition_window", self.repetition_window, minimum=1)),
                ("tonal_memory", check_float("tonal_memory", self.tonal_memory, minimum=0.0)),
                ("tonal_half_life", check_float("tonal_half_life", self.tonal_half_life, minimum=1.0))):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class PitchHistory:
    """The last `window` pitch tokens of each sequence, as a (B, V) mask for the repetition guard."""

    def __init__(self, batch_size: int, vocab_size: int, pitch_ids: range, window: int) -> None:
        self.window = window
        self._vocab_size = vocab_size
        self._lo, self._hi = pitch_ids.start, pitch_ids.stop
        self._recent = [deque(maxlen=window) for _ in range(batch_size)]
        self._counts = torch.zeros(batch_size, vocab_size, dtype=torch.int32)

    def push(self, row: int, token: int) -> None:
        """Record `token` for sequence `row` (non-pitch tokens are ignored)."""
        if not self._lo <= token < self._hi:
            return
        recent = self._recent[row]
        if len(recent) == recent.maxlen:
            self._counts[row, recent[0]] -= 1
        recent.append(token)
        self._counts[row, token] += 1

    def mask(self) -> Tensor:
        return self._counts > 0

    def copy_row(self, source: int, target: int) -> None:
        self._recent[target] = deque(self._recent[source], maxlen=self.window)
        self._counts[target] = self._counts[source]


class RepetitionPenalty(DecodeRule):
    """Step 1 of the module docstring as a decode-time rule: the CTRL penalty on each sequence's recent pitches
    (its :class:`PitchHistory`, fed with the prompt and the continuation). Last in the session's list, so it
    applies to the logits the other rules produced, as it always did."""

    def __init__(self, batch_size: int, vocab_size: int, pitch_ids: range, window: int, penalty: float) -> None:
        self.history = PitchHistory(batch_size, vocab_size, pitch_ids, window)
        self.penalty = penalty

    def observe(self, row: int, state: Any, token: int, continuation: bool) -> None:
        self.history.push(row, token)

    def fork(self, source: int, target: int) -> None:
        self.history.copy_row(source, target)

    def process(self, logits: Tensor, ctx: StepContext) -> Tensor:
        if self.penalty == 1.0:
            return logits
        return apply_repetition_penalty(logits.float(), self.history.mask().to(logits.device), self.penalty)

    def replace(self, **settings: Any) -> None:
        """``penalty`` (``repetition_penalty``) may change between two steps; the history stays."""
        unknown = set(settings) - {"penalty"}
        if unknown:
            raise ValueError(f"repetition penalty: cannot change {sorted(unknown)} while generating")
        self.penalty = float(settings["penalty"])


def apply_repetition_penalty(logits: Tensor, guarded: Tensor, penalty: float) -> Tensor:
    """CTRL-style penalty on the `guarded` (B, V) tokens; returns a new tensor."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(guarded, penalised, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits per row (ties at the k-th value are kept), -inf elsewhere."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the strictly more likely tokens
    drop_sorted = before >= p
    drop_sorted[..., 0] = False  # the most likely token always survives
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def filter_logits(logits: Tensor, allowed: Tensor | None, config: SamplingConfig) -> Tensor:
    """Steps 2-3 of the module docstring without the draw: (B, V) float32 logits, -inf where excluded."""
    logits = logits.float()
    if allowed is not None:
        logits = logits.masked_fill(~allowed.to(logits.device), float("-inf"))
    if config.temperature > 0:
        logits = logits / config.temperature
    logits = top_k_filter(logits, int(config.top_k))
    return top_p_filter(logits, float(config.top_p))


def sample_next(logits: Tensor, allowed: Tensor | None, config: SamplingConfig,
                generator: torch.Generator | None = None) -> Tensor:
    """One token per row of `logits` (B, V) among the `allowed` (B, V) ones -> (B,) int64.

    A row with no allowed token at all is a caller bug (the grammar always allows something) and raises.
    """
    if allowed is not None and not bool(allowed.any(dim=-1).all()):
        raise RuntimeError("sampling: a sequence has no allowed token (grammar mask is empty)")
    filtered = filter_logits(logits, allowed, config)
    if config.temperature == 0:
        return filtered.argmax(dim=-1)
    probs = torch.softmax(filtered, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def grammar_mask(grammar: Any, states: Sequence[Any]) -> Tensor:
    """(B, V) bool mask of the tokens `grammar.allowed_mask` allows after each state (shared cached rows)."""
    import numpy as np

    return torch.from_numpy(np.stack([grammar.allowed_mask(s) for s in states]))
