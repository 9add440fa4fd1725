"""Rules of music that decoding enforces on top of the REMI grammar, whatever the model wants.

The grammar guarantees a piece *decodes*; these guarantee it is *playable* and cannot get stuck:

* **No repeated key at one onset.** One instrument cannot strike the same pitch twice at the same instant.
  The shipped model before attention decay fell into loops of exactly that (bar 52 of a 20,000-token piece
  held 2,233 notes, the same (onset, pitch) up to 230 times). At a Pitch slot, pitches already started at
  the current onset on the current program are masked.
* **A bound on notes per onset** (``max_notes_per_onset``): once reached, no further note may start at this
  onset, so the piece has to move on (Position or Bar). Default 15: the most notes POP909 starts at one
  onset (99.99% of its onsets have at most 12).
* **No endless silence** (``max_empty_bars``): after that many consecutive bars without a note, the next
  bar must have one (Bar and EOS are masked until a note starts). Default 4: 90% of POP909's silent
  stretches are at most 3 bars.
* **No empty piece**: EOS is masked until the continuation has at least one note (greedy decoding used
  to end a piece of nothing but Bar tokens).
* **No stub** (``min_bars``): EOS is masked until the continuation has started this many bars (8). Trained on
  512-token crops, the model cannot know how far into a song it is, and ends a piece wherever the music
  sounds like an ending: 3 of 12 default pieces (`python generate.py`, seeds 0-11) stopped after 1-9 bars.
* **No thinning out, no cramming** (``min_notes_per_bar`` / ``max_notes_per_bar`` over the last
  ``density_window_bars`` bars), a soft rule. Densities are per bar of four beats, whatever the metre (a 2/4 bar
  counts half a bar), as in the long-piece checks. While the finished bars of that window (in a piece's first bars, at
  least half a window of them) average fewer notes than the floor, the odds of starting another note wherever the
  piece could instead move on (after Tempo, Chord or Duration: the points the ``density`` control biases) are
  multiplied by 3, and those of ending the bar (a Bar token) divided by 3, until the window recovers. The previous
  shipped model (fine-tuned) sometimes thinned a 20,000-token piece out to 3-5 notes per bar for dozens of bars
  (POP909's sparsest 16-bar window of a test song holds 8 per bar). A prompt of at least half a window of bars that is
  sparser than the floor lowers it to half the prompt's own density, so a sparse prompt may be continued sparsely: the
  rule stops a collapse, not a style. The mirror image above ``max_notes_per_bar`` (40; POP909's densest 16-bar test
  window holds 34 per bar): odds of another note divided by 3, of ending the bar multiplied by 3; a prompt denser than
  that raises the ceiling to twice its own density. (A piece that climbs to the top of the keyboard tends to pile up
  60-70 notes per bar there.)
* **No drifting off the keyboard** (``max_mean_pitch`` / ``min_mean_pitch`` over the last ``register_window_notes``
  pitched notes), the other soft rule. While the mean pitch of that window is above the upper bound, every pitch above
  the bound is made 3x less likely per octave above it (below the lower bound, likewise downwards), until the window
  comes back. The previous shipped model sometimes climbed to the top of the keyboard and stayed there (mean pitch
  85-90 for hundreds of bars, chromatic, in 4 of 10 pieces of 5,000 tokens at top_p=1; at top_p=0.95 one 20,000-token
  piece of 3 climbed there and piled up 68 notes per bar). POP909's mean pitch over 64 notes is 52-76 in 99.8% of its
  windows (extremes 43 and 86). A prompt whose own mean pitch lies beyond a bound moves that bound to 6 semitones past
  the prompt's mean, so a high prompt may be continued high.

Each hard guard counts how often it acted (a step where it removed at least one token the grammar allowed)
and the probability mass it removed (the model's probability of the forbidden choices, summed over
steps: how many times the model would have broken the rule); for the soft rules, the steps they biased and the
probability they moved (to starting a note; away from the far register). The counts go into each piece's .json.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..config import UserError, check_float, check_int
from ..tokenizer import DRUM_PROGRAM, GrammarState, Phase, TokenType, Vocabulary, note_start_mask
from .rules import DecodeRule, StepContext

__all__ = ["GuardConfig", "GuardCounts", "MusicGuards", "CORPUS_OPTIONS", "resolve_guard_values", "DEFAULT_MAX_NOTES_PER_ONSET", "DEFAULT_MAX_EMPTY_BARS",
           "DEFAULT_MIN_BARS",
           "DEFAULT_MIN_NOTES_PER_BAR", "DEFAULT_MAX_NOTES_PER_BAR", "DEFAULT_DENSITY_WINDOW_BARS", "DENSITY_FACTOR",
           "DEFAULT_MAX_MEAN_PITCH", "DEFAULT_MIN_MEAN_PITCH", "DEFAULT_REGISTER_WINDOW_NOTES", "REGISTER_FACTOR"]

DEFAULT_MAX_NOTES_PER_ONSET = 15
DEFAULT_MAX_EMPTY_BARS = 4
#: bars a continuation must have started before it may end (EOS)
DEFAULT_MIN_BARS = 8
#: the floor of the thinning-out rule. The long-piece checks want every 16-bar window at >= 5 notes per bar; the
#: rule acts only once its 8-bar window is below the floor, so the floor sits above 5 (POP909's sparsest 16-bar
#: test window holds 8 per bar)
DEFAULT_MIN_NOTES_PER_BAR = 6.0
DEFAULT_DENSITY_WINDOW_BARS = 8
#: the ceiling of the density rule: above POP909's densest 16-bar test window (34 notes per bar), below the 45
#: the long-piece checks allow
DEFAULT_MAX_NOTES_PER_BAR = 40.0
#: factor on the odds of starting a note while a piece is too sparse (divisor while too dense; the
#: ``density=high`` factor)
DENSITY_FACTOR = 3.0
#: the register rule's bounds on the mean pitch of the last notes: past POP909's 99.9th / 0.1st percentiles
#: (75.7 / 52.3 over 64 notes), which transposition by +-6 in training widens
DEFAULT_MAX_MEAN_PITCH = 78.0
DEFAULT_MIN_MEAN_PITCH = 46.0
DEFAULT_REGISTER_WINDOW_NOTES = 64
#: factor per octave by which the register rule makes a pitch beyond the bound less likely
REGISTER_FACTOR = 3.0
_GUARDS = ("repeated_pitch", "onset_full", "empty_bars", "empty_piece", "too_short", "sparse", "dense", "register")


@dataclass(frozen=True)
class GuardConfig:
    """Which musical rules decoding enforces (0 turns a bound off; see the module docstring)."""

    no_repeated_pitch: bool = True
    max_notes_per_onset: int = DEFAULT_MAX_NOTES_PER_ONSET
    max_empty_bars: int = DEFAULT_MAX_EMPTY_BARS
    min_bars: int = DEFAULT_MIN_BARS  # 0 = off
    min_notes_per_bar: float = DEFAULT_MIN_NOTES_PER_BAR  # 0 = off
    max_notes_per_bar: float = DEFAULT_MAX_NOTES_PER_BAR  # 0 = off
    density_window_bars: int = DEFAULT_DENSITY_WINDOW_BARS
    max_mean_pitch: float = DEFAULT_MAX_MEAN_PITCH
    min_mean_pitch: float = DEFAULT_MIN_MEAN_PITCH
    register_window_notes: int = DEFAULT_REGISTER_WINDOW_NOTES  # 0 = off
    max_copied_bars: int = 2  # no endless loops (loops.py): bars in a row copying the bar before; 0 = off
    copy_penalty: float = 64.0
    enabled: bool = True  # False: no guard at all (benchmarks time the loop with and without them)

    def __post_init__(self) -> None:
        object.__setattr__(self, "no_repeated_pitch", bool(self.no_repeated_pitch))
        for name in ("max_notes_per_onset", "max_empty_bars", "min_bars"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=0))
        for name in ("min_notes_per_bar", "max_notes_per_bar"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), minimum=0.0))
        if self.max_notes_per_bar and self.min_notes_per_bar >= self.max_notes_per_bar:
            raise UserError(f"min_notes_per_bar={self.min_notes_per_bar} must be below "
                            f"max_notes_per_bar={self.max_notes_per_bar}")
        object.__setattr__(self, "density_window_bars", check_int("density_window_bars", self.density_window_bars,
                                                                 minimum=1))
        for name in ("max_mean_pitch", "min_mean_pitch"):
            object.__setattr__(self, name, check_float(name, getattr(self, name), minimum=0.0, maximum=127.0))
        object.__setattr__(self, "register_window_notes", check_int("register_window_notes",
                                                                    self.register_window_notes, minimum=0))
        object.__setattr__(self, "max_copied_bars", check_int("max_copied_bars", self.max_copied_bars, minimum=0))
        object.__setattr__(self, "copy_penalty", check_float("copy_penalty", self.copy_penalty, minimum=1.0))
        if self.min_mean_pitch >= self.max_mean_pitch:
            raise UserError(f"min_mean_pitch={self.min_mean_pitch} must be below max_mean_pitch={self.max_mean_pitch}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: the bounds a model's training corpus sets by default (measured at prepare time, `musicgen.data.stats`, stored in
#: the checkpoint as ``corpus_stats["decoding"]``); GuardConfig's own defaults are POP909's values
CORPUS_OPTIONS = ("max_notes_per_onset", "max_empty_bars", "min_bars", "min_notes_per_bar", "max_notes_per_bar",
                  "min_mean_pitch", "max_mean_pitch")


def resolve_guard_values(explicit: Mapping[str, Any], corpus: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every GuardConfig field by the one rule of decoding bounds: the value the user set (not None) wins, else the
    checkpoint's corpus statistics (`corpus`: ``corpus_stats["decoding"]``, only `CORPUS_OPTIONS` are read), else
    GuardConfig's default (POP909's). Generation options, the CLI and the studio all resolve through here."""
    corpus = {k: v for k, v in (corpus or {}).items() if k in CORPUS_OPTIONS and v is not None}
    resolved = {}
    for f in dataclasses.fields(GuardConfig):
        value = explicit.get(f.name)
        resolved[f.name] = value if value is not None else corpus.get(f.name, f.default)
    return resolved


@dataclass
class GuardCounts:
    """How often each guard acted for one sequence, and the model probability it removed (for the soft
    ``sparse`` rule: the probability it moved to starting a note, before the grammar mask)."""

    acted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_GUARDS, 0))
    mass: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_GUARDS, 0.0))

    def to_dict(self) -> dict[str, Any]:
        return {"acted": dict(self.acted), "probability_removed": {k: round(v, 4) for k, v in self.mass.items()}}


@dataclass
class _Row:
    onset: int = -1  # absolute grid step of the current onset
    started: set[tuple[int, int]] = field(default_factory=set)  # (program, pitch) started at this onset
    notes_at_onset: int = 0
    notes_in_bar: int = 0
    empty_bars: int = 0  # consecutive finished bars without a note
    notes: int = 0  # notes of the continuation so far
    bars: int = 0  # bars the continuation has started (its Bar tokens)
    bar_notes: deque = field(default_factory=deque)  # (notes, grid steps) of the last finished bars: the window
    prompt_notes: int = 0  # notes, finished bars and their steps in the prompt (a sparse prompt lowers the floor)
    prompt_bars: int = 0
    prompt_steps: int = 0
    bar_steps: int = 0  # length of the current bar in grid steps (its metre is known once its TimeSig is read)
    bar_of_prompt: bool = False  # the current bar was started by the prompt (the continuation's first Bar ends it)
    pitches: deque = field(default_factory=deque)  # the last pitched notes (the register window)
    prompt_pitch_sum: float = 0.0  # sum and count of the prompt's pitched notes (a high prompt moves the bound)
    prompt_pitch_notes: int = 0


class MusicGuards(DecodeRule):
    """Per-sequence bookkeeping of the rules, and the masks they impose (numpy rows, modified in place)."""

    report_key = "guards"
    #: settings that shape the per-row bookkeeping (window lengths): fixed once generation has started
    _STRUCTURAL = frozenset({"enabled", "density_window_bars", "register_window_notes"})

    def __init__(self, vocab: Vocabulary, config: GuardConfig, batch_size: int) -> None:
        self.config = config
        self._pitch = vocab.ranges[TokenType.PITCH]
        self._types = np.asarray(vocab.types)
        self._values = np.asarray(vocab.values)
        self._note_start = note_start_mask(vocab)
        self._bar_id, self._eos_id = vocab.bar_id, vocab.eos_id
        self._grid = int(vocab.config.grid)  # steps per whole note = per bar of four beats
        window = config.density_window_bars
        self.rows = [_Row(bar_notes=deque(maxlen=window), pitches=deque(maxlen=max(config.register_window_notes, 1)))
                     for _ in range(batch_size)]
        self._pitch_values = self._values[self._pitch.start:self._pitch.stop].astype(np.float32)  # MIDI pitches
        self._note_bias = np.where(self._note_start, math.log(DENSITY_FACTOR), 0.0).astype(np.float32)
        self.counts = [GuardCounts() for _ in range(batch_size)]

    # --- bookkeeping -------------------------------------------------------------------------------
    def observe(self, row: int, state: GrammarState, token: int, continuation: bool) -> None:
        """Record ``token`` (already accepted, ``state`` is the grammar state after it). Prompt tokens
        (``continuation=False``) set the onset and bar context but do not count as continuation notes."""
        r = self.rows[row]
        kind = int(self._types[token])
        if kind != TokenType.BAR:
            r.bar_steps = state.bar_length  # after this bar's TimeSig, if any: the bar's true length
        if kind == TokenType.BAR:
            if continuation:
                r.bars += 1
            if state.bar_start > 0:  # a bar ended (the piece's first Bar ends none)
                r.empty_bars = 0 if r.notes_in_bar else r.empty_bars + 1
                r.bar_notes.append((r.notes_in_bar, r.bar_steps or self._grid))
                if r.bar_of_prompt:
                    r.prompt_bars += 1
                    r.prompt_notes += r.notes_in_bar
                    r.prompt_steps += r.bar_steps or self._grid
            r.bar_of_prompt = not continuation
            r.notes_in_bar = 0
            r.onset, r.started, r.notes_at_onset = -1, set(), 0
        elif kind == TokenType.POSITION:
            r.onset, r.started, r.notes_at_onset = state.step, set(), 0
        elif kind == TokenType.PITCH:
            r.started.add((state.program, int(self._values[token])))
            r.notes_at_onset += 1
            r.notes_in_bar += 1
            r.empty_bars = 0
            if continuation:
                r.notes += 1
            if state.program != DRUM_PROGRAM:
                pitch = int(self._values[token])
                r.pitches.append(pitch)
                if not continuation:
                    r.prompt_pitch_sum += pitch
                    r.prompt_pitch_notes += 1

    def sparse_floor(self, row: int) -> float:
        """The notes-per-bar floor of the thinning-out rule for one sequence (0 = off): the configured one,
        or half the prompt's own density when a prompt of at least half a window of bars is sparser."""
        r, cfg = self.rows[row], self.config
        floor = cfg.min_notes_per_bar
        if 2 * r.prompt_bars >= cfg.density_window_bars:
            floor = min(floor, 0.5 * r.prompt_notes * self._grid / r.prompt_steps)
        return floor

    def density_ceiling(self, row: int) -> float:
        """The notes-per-bar ceiling of the density rule (0 = off): the configured one, or twice the prompt's own
        density when a prompt of at least half a window of bars is denser."""
        r, cfg = self.rows[row], self.config
        ceiling = cfg.max_notes_per_bar
        if ceiling and 2 * r.prompt_bars >= cfg.density_window_bars:
            ceiling = max(ceiling, 2.0 * r.prompt_notes * self._grid / r.prompt_steps)
        return ceiling

    def density_excursion(self, row: int) -> int:
        """-1 while the last ``density_window_bars`` finished bars (in a piece's first bars, at least half that
        many) average fewer notes than the floor, +1 while more than the ceiling, else 0."""
        r = self.rows[row]
        if 2 * len(r.bar_notes) < self.config.density_window_bars:
            return 0
        mean = sum(n for n, _ in r.bar_notes) * self._grid / sum(steps for _, steps in r.bar_notes)
        floor, ceiling = self.sparse_floor(row), self.density_ceiling(row)
        if floor > 0 and mean < floor:
            return -1
        if ceiling > 0 and mean > ceiling:
            return 1
        return 0

    def is_sparse(self, row: int) -> bool:
        """Whether the density window is below the floor (see :meth:`density_excursion`)."""
        return self.density_excursion(row) == -1

    def register_bounds(self, row: int) -> tuple[float, float]:
        """(lower, upper) bound of the register rule for one sequence: the configured ones, moved to 6 semitones
        past the prompt's own mean pitch where that lies beyond them."""
        r, cfg = self.rows[row], self.config
        lo, hi = cfg.min_mean_pitch, cfg.max_mean_pitch
        if r.prompt_pitch_notes:
            mean = r.prompt_pitch_sum / r.prompt_pitch_notes
            lo, hi = min(lo, mean - 6.0), max(hi, mean + 6.0)
        return lo, hi

    def register_excursion(self, row: int) -> tuple[int, float] | None:
        """(+1 above / -1 below, the bound crossed) while the register window's mean pitch is beyond a bound."""
        r, size = self.rows[row], self.config.register_window_notes
        if not size or len(r.pitches) < size:
            return None
        mean = sum(r.pitches) / len(r.pitches)
        lo, hi = self.register_bounds(row)
        if mean > hi:
            return 1, hi
        if mean < lo:
            return -1, lo
        return None

    def fork(self, source: int, target: int) -> None:
        self.rows[target] = copy.deepcopy(self.rows[source])

    def report(self, row: int) -> dict[str, Any]:
        return {**self.config.to_dict(), **self.counts[row].to_dict()}

    def replace(self, **settings: Any) -> None:
        """Any setting but the windows (:attr:`_STRUCTURAL`) may change between two steps."""
        fixed = sorted(set(settings) & self._STRUCTURAL)
        if fixed:
            raise ValueError(f"guards: cannot change {fixed} while generating")
        self.config = dataclasses.replace(self.config, **settings)

    def process(self, logits: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        """The soft rules (:meth:`logit_bias`)."""
        bias = self.logit_bias(ctx.states, logits, ctx.temperature, ctx.done)
        return logits if bias is None else logits + bias

    # --- logits (the soft rules) ----------------------------------------------------------------------
    def logit_bias(self, states: Sequence[GrammarState], logits: torch.Tensor, temperature: float,
                   done: Sequence[bool]) -> torch.Tensor | None:
        """(B, V) additive bias of the two soft rules (None when no row needs one at this step), scaled by the
        temperature so the odds change by exactly the documented factors; counts the steps and the probability
        each moved (``logits``: this step's raw logits, for that count only)."""
        cfg = self.config
        density_rows = [(row, ex) for row in range(len(states))
                        if not done[row] and (ex := self.density_excursion(row)) != 0]
        register_rows = [(row, ex) for row, s in enumerate(states)
                         if cfg.register_window_notes and not done[row] and s.phase == Phase.VELOCITY
                         and s.program != DRUM_PROGRAM and (ex := self.register_excursion(row)) is not None]
        if not density_rows and not register_rows:
            return None
        scale = float(temperature) if temperature > 0 else 1.0
        bias = np.zeros(tuple(logits.shape), dtype=np.float32)
        for row, side in density_rows:  # side -1: too sparse (more notes), +1: too dense (fewer)
            if states[row].phase in (Phase.TEMPO, Phase.CHORD, Phase.DURATION):
                bias[row] = -side * self._note_bias * scale  # here a note competes with moving on (Position, Bar)
            bias[row, self._bar_id] = side * math.log(DENSITY_FACTOR) * scale  # wherever a bar may end
            before = torch.softmax(logits[row].float(), -1).numpy()
            after = torch.softmax(logits[row].float() + torch.from_numpy(bias[row]), -1).numpy()
            name = "sparse" if side < 0 else "dense"
            self.counts[row].acted[name] += 1
            self.counts[row].mass[name] += abs(float(after[self._note_start].sum() - before[self._note_start].sum()))
        for row, (side, bound) in register_rows:
            beyond = np.maximum(side * (self._pitch_values - bound), 0.0) / 12.0  # octaves past the bound
            push = -math.log(REGISTER_FACTOR) * scale * beyond
            span = slice(self._pitch.start, self._pitch.stop)
            before = torch.softmax(logits[row, span].float(), -1).numpy()
            bias[row, span] += push
            after = torch.softmax(logits[row, span].float() + torch.from_numpy(push.astype(np.float32)), -1).numpy()
            self.counts[row].acted["register"] += 1
            self.counts[row].mass["register"] += float(before[beyond > 0].sum() - after[beyond > 0].sum())
        return torch.from_numpy(bias)

    # --- masks -------------------------------------------------------------------------------------
    def forbidden(self, row: int, state: GrammarState, allowed: np.ndarray) -> dict[str, np.ndarray]:
        """For one sequence: which allowed tokens each guard forbids now (only guards that act)."""
        r, cfg = self.rows[row], self.config
        out: dict[str, np.ndarray] = {}
        if state.phase == Phase.VELOCITY and cfg.no_repeated_pitch and r.started:
            ids = [self._pitch.start + p for prog, p in r.started if prog == state.program]
            mask = np.zeros_like(allowed)
            mask[ids] = True
            mask &= allowed
            if mask.any() and (allowed & ~mask).any():
                out["repeated_pitch"] = mask
        if cfg.max_notes_per_onset and r.notes_at_onset >= cfg.max_notes_per_onset and state.phase in (
                Phase.POSITION, Phase.TEMPO, Phase.CHORD, Phase.DURATION):
            mask = allowed & self._note_start
            if mask.any() and (allowed & ~mask).any():
                out["onset_full"] = mask
        if cfg.max_empty_bars and r.empty_bars >= cfg.max_empty_bars and r.notes_in_bar == 0:
            mask = np.zeros_like(allowed)
            mask[[self._bar_id, self._eos_id]] = True
            mask &= allowed
            if mask.any() and (allowed & ~mask).any():
                out["empty_bars"] = mask
        if r.notes == 0 and allowed[self._eos_id] and allowed.sum() > 1:
            mask = np.zeros_like(allowed)
            mask[self._eos_id] = True
            out["empty_piece"] = mask
        elif r.bars < cfg.min_bars and allowed[self._eos_id] and allowed.sum() > 1:
            mask = np.zeros_like(allowed)
            mask[self._eos_id] = True
            out["too_short"] = mask
        return out

    def restrict(self, row: int, state: GrammarState, allowed: np.ndarray,
                 probs: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Apply every guard to one row of the grammar mask (in place) and count what each removed.

        ``probs(allowed)``: the model's distribution over the vocabulary at this step given the grammar
        mask (for the removed mass), called only when a guard acts. The result always keeps at least one
        token: a guard that would empty the row does not act.
        """
        forbidden = self.forbidden(row, state, allowed)
        dist = probs(allowed.copy()) if forbidden and probs is not None else None
        for name, mask in forbidden.items():
            if not (allowed & ~mask).any():
                continue
            self.counts[row].acted[name] += 1
            if dist is not None:
                self.counts[row].mass[name] += float(dist[mask].sum())
            allowed &= ~mask
        return allowed
