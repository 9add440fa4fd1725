"""The REMI grammar: which tokens may follow a prefix. The decoder and constrained sampling share it.

A piece is `BOS (Bar [TimeSig] (Position [Tempo] [Chord] Note*)*)* EOS PAD*`, where a note is
`[Program] Velocity Pitch Duration`. Rules beyond the sequence shape:
- positions strictly increase inside a bar and stay below the bar's length (which the current metre sets;
  4/4 until a TimeSig says otherwise, and a metre holds until the next TimeSig);
- a Position must be followed by something (Tempo, Chord or a note) before the next Position or Bar;
- the program is 0 at every Bar and a Program token changes it for the following notes of that bar;
- EOS is followed by PAD only.
A sequence may also start directly with a Bar (training crops do). The decoder skips every token the grammar
does not allow at that point, leaving the state unchanged, and drops an unfinished note at the end; it counts
what it skipped. Constrained sampling only ever offers allowed tokens, so it never skips anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import NamedTuple

import numpy as np

from .vocab import TokenType, Vocabulary


class Phase(IntEnum):
    """What the last accepted token was (START before any token)."""

    START = 0
    BOS = 1
    BAR = 2
    TIME_SIG = 3
    POSITION = 4
    TEMPO = 5
    CHORD = 6
    PROGRAM = 7
    VELOCITY = 8
    PITCH = 9
    DURATION = 10
    EOS = 11
    PAD = 12


_PHASE_OF_TYPE = {
    TokenType.BOS: Phase.BOS, TokenType.BAR: Phase.BAR, TokenType.TIME_SIG: Phase.TIME_SIG,
    TokenType.POSITION: Phase.POSITION, TokenType.TEMPO: Phase.TEMPO, TokenType.CHORD: Phase.CHORD,
    TokenType.PROGRAM: Phase.PROGRAM, TokenType.VELOCITY: Phase.VELOCITY, TokenType.PITCH: Phase.PITCH,
    TokenType.DURATION: Phase.DURATION, TokenType.EOS: Phase.EOS, TokenType.PAD: Phase.PAD,
}

_CLOSES_EVENT = {TokenType.BAR, TokenType.EOS}
_NOTE_START = {TokenType.PROGRAM, TokenType.VELOCITY}
# Token types allowed after each phase (Position additionally needs a valid value, see `allows`).
FOLLOWERS: dict[Phase, frozenset[TokenType]] = {
    Phase.START: frozenset({TokenType.BOS, TokenType.BAR}),
    Phase.BOS: frozenset({TokenType.BAR, TokenType.EOS}),
    Phase.BAR: frozenset({TokenType.TIME_SIG, TokenType.POSITION} | _CLOSES_EVENT),
    Phase.TIME_SIG: frozenset({TokenType.POSITION} | _CLOSES_EVENT),
    Phase.POSITION: frozenset({TokenType.TEMPO, TokenType.CHORD} | _NOTE_START),
    Phase.TEMPO: frozenset({TokenType.CHORD, TokenType.POSITION} | _NOTE_START | _CLOSES_EVENT),
    Phase.CHORD: frozenset({TokenType.POSITION} | _NOTE_START | _CLOSES_EVENT),
    Phase.PROGRAM: frozenset({TokenType.VELOCITY}),
    Phase.VELOCITY: frozenset({TokenType.PITCH}),
    Phase.PITCH: frozenset({TokenType.DURATION}),
    Phase.DURATION: frozenset({TokenType.POSITION} | _NOTE_START | _CLOSES_EVENT),
    Phase.EOS: frozenset({TokenType.PAD}),
    Phase.PAD: frozenset({TokenType.PAD}),
}


def note_start_mask(vocab: Vocabulary) -> np.ndarray:
    """Boolean mask over ``vocab`` of the tokens that open a note (Program, Velocity).

    Defined once, beside the grammar rule that says where a note may start, because decoding rules that make
    a piece denser or sparser (musicgen.generation.guards, .controls) raise or lower exactly these odds."""
    mask = np.zeros(len(vocab), dtype=bool)
    for kind in _NOTE_START:
        span = vocab.ranges[kind]
        mask[span.start:span.stop] = True
    return mask


@dataclass(frozen=True)
class GrammarState:
    """Everything the grammar (and the decoder) needs to know about a prefix. Immutable and cheap to copy.

    `bar_start` is the absolute grid step of the current bar (-1 before the first Bar), `position` the last
    position in the bar (-1 when none yet), `metre` the current time signature, `bar_length` its steps.
    """

    phase: Phase = Phase.START
    bar_start: int = -1
    bar_length: int = 16
    metre: tuple[int, int] = (4, 4)
    position: int = -1
    program: int = 0
    velocity: int = 0
    pitch: int = 0

    @property
    def step(self) -> int:
        """Absolute grid step of the current position."""
        return self.bar_start + max(self.position, 0)

    @property
    def next_bar_start(self) -> int:
        """Grid step where the next Bar starts: the grammar's bar line on token streams (a TimeSig right after a
        Bar sets that bar's length, so a bar's metre is known once its first event comes)."""
        return 0 if self.bar_start < 0 else self.bar_start + self.bar_length

    @property
    def ended(self) -> bool:
        return self.phase in (Phase.EOS, Phase.PAD)


class WalkStep(NamedTuple):
    """One token of `RemiGrammar.walk`: its index and id, the state after it, and whether it was allowed (a
    token that was not is skipped: `state` is then the state before it)."""

    index: int
    token: int
    state: GrammarState
    allowed: bool


class RemiGrammar:
    """Incremental REMI grammar over one vocabulary.

    `walk(ids)` is the one walk over a token sequence (the decoder, prompts, generation and evaluation use
    it); `allows(state, id)` / `advance(state, id)` are its single steps (constrained sampling advances token
    by token); `allowed_types(state)` says which token families may come next; `allowed_mask(state)` gives a
    boolean mask over the whole vocabulary for constrained sampling; `can_end(state)` whether EOS may follow.
    """

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._types = vocab.types
        self._values = vocab.values
        self._grid = vocab.config.grid
        self._position_start = vocab.ranges[TokenType.POSITION].start
        self._base_masks: dict[Phase, np.ndarray] = {}
        for phase, followers in FOLLOWERS.items():
            mask = np.zeros(len(vocab), dtype=bool)
            for kind in followers:
                if kind != TokenType.POSITION:
                    span = vocab.ranges[kind]
                    mask[span.start:span.stop] = True
            self._base_masks[phase] = mask
        self._mask_cache: dict[tuple[Phase, int, int], np.ndarray] = {}

    def initial_state(self) -> GrammarState:
        return GrammarState(bar_length=self._grid)

    def walk(self, ids: Iterable[int], state: GrammarState | None = None) -> Iterator[WalkStep]:
        """Follow `ids` from `state` (the initial state by default), one `WalkStep` per id; a token the grammar
        does not allow where it stands is skipped (reported with `allowed=False`, the state unchanged)."""
        state = self.initial_state() if state is None else state
        for index, raw in enumerate(ids):
            token = int(raw)
            if self.allows(state, token):
                state = self.advance(state, token)
                yield WalkStep(index, token, state, True)
            else:
                yield WalkStep(index, token, state, False)

    def can_end(self, state: GrammarState) -> bool:
        """Whether EOS may follow `state`, i.e. the piece could close here (no note or event left open)."""
        return TokenType.EOS in FOLLOWERS[state.phase]

    def allowed_types(self, state: GrammarState) -> frozenset[TokenType]:
        """Token families that may follow `state` (Position only while a later position fits in the bar)."""
        followers = FOLLOWERS[state.phase]
        if TokenType.POSITION in followers and state.position + 1 >= state.bar_length:
            followers = followers - {TokenType.POSITION}
        if not self.vocab.ranges[TokenType.PROGRAM].size or not self.vocab.ranges[TokenType.CHORD].size:
            followers = frozenset(k for k in followers if self.vocab.ranges[k].size)
        return followers

    def allows(self, state: GrammarState, token_id: int) -> bool:
        if not 0 <= token_id < len(self._types):
            return False
        kind = TokenType(int(self._types[token_id]))
        if kind not in FOLLOWERS[state.phase]:
            return False
        if kind == TokenType.POSITION:
            value = int(self._values[token_id])
            return state.position < value < state.bar_length
        return True

    def advance(self, state: GrammarState, token_id: int) -> GrammarState:
        """State after `token_id`, which must be allowed (check with `allows`)."""
        kind = TokenType(int(self._types[token_id]))
        value = int(self._values[token_id])
        phase = _PHASE_OF_TYPE[kind]
        if kind == TokenType.BAR:
            return replace(state, phase=phase, bar_start=state.next_bar_start, position=-1, program=0)
        if kind == TokenType.TIME_SIG:
            num, den = self.vocab.time_signatures[value]
            return replace(state, phase=phase, metre=(num, den), bar_length=self._grid * num // den)
        if kind == TokenType.POSITION:
            return replace(state, phase=phase, position=value)
        if kind == TokenType.PROGRAM:
            return replace(state, phase=phase, program=value)
        if kind == TokenType.VELOCITY:
            return replace(state, phase=phase, velocity=value)
        if kind == TokenType.PITCH:
            return replace(state, phase=phase, pitch=value)
        return replace(state, phase=phase)

    def allowed_mask(self, state: GrammarState) -> np.ndarray:
        """Boolean mask over the vocabulary of the ids allowed next (cached; do not modify it)."""
        key = (state.phase, state.position, state.bar_length)
        mask = self._mask_cache.get(key)
        if mask is None:
            mask = self._base_masks[state.phase].copy()
            if TokenType.POSITION in FOLLOWERS[state.phase]:
                lo = self._position_start + state.position + 1
                hi = self._position_start + min(state.bar_length, self.vocab.config.max_bar_steps)
                mask[lo:hi] = True
            self._mask_cache[key] = mask
        return mask
