"""The batched recurrent generation loop: feed the prompt, then sample token by token until each sequence stops.

Why recurrent: the model's `step` form keeps a constant-size state (linear attention + SPE), so a 20,000-token
piece costs the same per token and the same memory as a 200-token one. All `num_samples` sequences run as
one batch (B = num_samples); each has its own grammar state, tempo clock, stop bookkeeping and repetition
history, all advanced over the prompt first so the grammar knows the prompt's bar, position and metre.

Stop conditions, per sequence (the first that applies wins):
- `eos`: the model sampled EOS (unless `allow_eos` is false, which masks EOS out);
- `bars`: it sampled the Bar that would start continuation bar `bars + 1` (that Bar is not kept);
- `seconds`: it sampled a Bar/Position at or after `seconds` of continuation (that token is not kept);
- `tokens`: the continuation reached `tokens` tokens (`max_tokens`, a safety cap, when `tokens` is unset).
A sequence stopped for any reason but EOS is trimmed back to its last event boundary (so no half note
is left for the decoder to drop) and closed with EOS. Finished sequences keep stepping with PAD (the batch
runs in lock step) but their outputs are ignored; the loop ends when all are finished.

Each step runs the decode-time rules (:mod:`.rules`), in the order of their list: each may change the logits
(the tonal memory, the density control, the guards' soft rules, the repetition penalty) and narrow each row's
mask after the grammar's (the musician's controls: chord chart, tempo, metre, key; then the musical guards,
always last). The session knows them only through that interface.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Collection, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..config import UserError, check_float, check_int
from ..tokenizer import Bins, GrammarState, Phase, REMITokenizer, TokenType
from .controls import ControlConfig
from .guards import GuardConfig
from .prompt import Prompt
from .rules import DEFAULT_RULES, DecodeRule, RuleSettings, RuleSpec, StepContext, build_rules
from .sampling import SamplingConfig, grammar_mask, sample_next
from .timeline import TokenClock, event_step, follow_tempo

DEFAULT_MAX_TOKENS = 4096


@dataclass(frozen=True)
class StopConfig:
    """When each sequence stops (see the module docstring). `max_tokens` only applies when `tokens` is unset."""

    bars: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    allow_eos: bool = True

    def __post_init__(self) -> None:
        for name in ("bars", "tokens"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=1, allow_none=True))
        object.__setattr__(self, "seconds", check_float("seconds", self.seconds, minimum=0.0, exclusive_min=True,
                                                        allow_none=True))
        object.__setattr__(self, "max_tokens", check_int("max_tokens", self.max_tokens, minimum=1))
        object.__setattr__(self, "allow_eos", bool(self.allow_eos))

    @property
    def token_limit(self) -> int:
        return int(self.tokens) if self.tokens is not None else int(self.max_tokens)

    @property
    def has_musical_limit(self) -> bool:
        return self.bars is not None or self.tokens is not None or self.seconds is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SampleResult:
    """One generated sequence: `ids` = prompt + continuation + EOS."""

    ids: list[int]
    prompt_length: int
    start_step: int  # grid step where the continuation starts (0 without a prompt)
    stop_reason: str
    n_bars: int  # bars the continuation started
    continuation_seconds: float  # onset of its last event, from the continuation start
    guards: dict[str, Any] = field(default_factory=dict)  # how often each musical rule acted (guards.py)
    controls: dict[str, Any] = field(default_factory=dict)  # the controls applied and what they did (controls.py)
    tonal_memory: dict[str, Any] = field(default_factory=dict)  # the pitch-class prior and its use (tonal.py)
    other_rules: dict[str, Any] = field(default_factory=dict)  # reports of rules beyond the default ones, by key


@dataclass
class _Track:
    """Per-sequence bookkeeping of the loop."""

    state: GrammarState
    clock: TokenClock
    first_mask: np.ndarray | None
    start_seconds: float
    tokens: list[int] = field(default_factory=list)
    closable: int = 0  # length of `tokens` at the last point where EOS was allowed
    bars: int = 0
    last_seconds: float = 0.0
    done: bool = False
    reason: str = ""


def state_nbytes(state: Any) -> int:
    """Bytes held by the model's recurrent state (its own `nbytes()` when it has one)."""
    if hasattr(state, "nbytes") and callable(state.nbytes):
        return int(state.nbytes())
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_nbytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_nbytes(v) for v in state)
    return 0


def _repeat_rows(cache: dict, batch_size: int) -> dict:
    """A layer's recurrent cache for one sequence -> the same for ``batch_size`` sequences (own copies)."""
    return {k: v.expand(batch_size, *v.shape[1:]).contiguous() if isinstance(v, torch.Tensor) else v
            for k, v in cache.items()}


def split_seed(seed: int) -> tuple[int, int]:
    """Two independent seeds (model noise, sampling) from one user seed."""
    noise, sampling = np.random.SeedSequence(int(seed)).generate_state(2, dtype=np.uint64)
    return int(noise) >> 1, int(sampling) >> 1


def sample_seed(seed: int, *parts: int) -> int:
    """The seed of one part of a run that generates in several sessions (sample ``i``, gap ``g`` ...); part
    (0, ..., 0) is ``seed`` itself, so the first sample of such a run is the piece ``seed`` names."""
    if not any(parts):
        return int(seed)
    return int(np.random.SeedSequence([int(seed), *map(int, parts)]).generate_state(1, dtype=np.uint64)[0]) >> 1


class GenerationSession:
    """Generates a batch of continuations of one prompt with one model (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: REMITokenizer, sampling: SamplingConfig, stop: StopConfig,
                 seed: int, device: str | torch.device = "cpu", guards: GuardConfig | None = None,
                 controls: ControlConfig | list[ControlConfig] | None = None,
                 rules: Sequence[RuleSpec] = DEFAULT_RULES, rule_settings: RuleSettings | None = None,
                 keep_rules: Collection[str] = ()) -> None:
        """``controls``: the musician's controls (chord chart, bpm, metre, density, key), one config or one per
        sample. ``rules``: the decode-time rules, in order (:data:`~.rules.DEFAULT_RULES`); each is built from
        its settings group: "sampling", "guards" and "controls" are the arguments above, ``rule_settings`` holds
        the groups of rules beyond those. ``keep_rules``: rules built even when their settings switch them off
        (a stream keeps the controls it may be steered by)."""
        self.model, self.tokenizer = model, tokenizer
        self.sampling, self.stop = sampling, stop
        self.guard_config = guards or GuardConfig()
        self.rule_specs = tuple(rules)
        self.rule_settings: dict[str, Any] = {"sampling": sampling, "guards": self.guard_config, "controls": controls}
        clash = set(rule_settings or {}) & set(self.rule_settings)
        if clash:
            raise ValueError(f"rule_settings may not replace the session's own groups: {', '.join(sorted(clash))}")
        self.rule_settings.update(rule_settings or {})
        self.keep_rules = frozenset(keep_rules)
        self.rules: list[DecodeRule] = []  # built for the batch by feed_prompt
        self._fed = False
        self.device = torch.device(device)
        self.vocab = tokenizer.vocab
        self.grammar = tokenizer.grammar
        self._bins = Bins(tokenizer.config)
        noise_seed, sample_seed = split_seed(seed)
        self._noise_seed = noise_seed
        self._noise_gen = torch.Generator().manual_seed(noise_seed)
        self._sample_gen = torch.Generator().manual_seed(sample_seed)
        self._only_bar = self._mask_of([self.vocab.bar_id])
        self._bar_or_position = self._only_bar | self._type_mask(TokenType.POSITION)
        self.tokens_per_second = 0.0
        self.state: Any = None  # the model's recurrent state, set by feed_prompt

    def _mask_of(self, ids: list[int]) -> np.ndarray:
        mask = np.zeros(len(self.vocab), dtype=bool)
        mask[ids] = True
        return mask

    def _type_mask(self, kind: TokenType) -> np.ndarray:
        return self._mask_of(list(self.vocab.ids_of_type(kind)))

    # --- prompt ------------------------------------------------------------------------------------
    def _walk_prompt(self, prompt: Prompt) -> tuple[list[GrammarState], TokenClock]:
        """The grammar state after each prompt token (a prompt must be grammatical) and its tempo clock. A BOS
        after the first token is a fill-in-the-middle separator (`musicgen.data.fim`: the bars after a gap, then
        the piece again from its earlier bars): the walk and the clock start again there."""
        states: list[GrammarState] = []
        ids = list(prompt.ids)
        cuts = [0] + [i for i in range(1, len(ids)) if ids[i] == self.vocab.bos_id] + [len(ids)]
        for begin, end in zip(cuts, cuts[1:]):
            clock = TokenClock.for_config(self.tokenizer.config)
            for _, token, state, allowed in self.grammar.walk(ids[begin:end]):
                if not allowed:
                    raise RuntimeError(f"prompt token {self.vocab.tokens[token]} breaks the REMI grammar")
                follow_tempo(clock, state, int(self.vocab.values[token]), self._bins)
                states.append(state)
        return states, clock

    def _start(self, prompt: Prompt, state: GrammarState) -> tuple[int, np.ndarray | None]:
        """Grid step where the continuation starts, and the mask its first token must fit."""
        if prompt.is_empty:
            return 0, None
        if prompt.ends_at_bar_line:
            return state.next_bar_start, self._only_bar
        start = state.bar_start + state.position + 1 if state.position >= 0 else state.bar_start
        return start, self._bar_or_position

    @torch.inference_mode()
    def feed_prompt(self, prompt: Prompt, batch_size: int) -> tuple[torch.Tensor, list[_Track], int]:
        """Step the model over the prompt (recurrent form); returns the next logits, the tracks, start step."""
        if not prompt.ids:
            raise UserError("empty prompt (not even BOS)")
        states, clock = self._walk_prompt(prompt)
        gstate = states[-1]
        start_step, first_mask = self._start(prompt, gstate)
        start_seconds = clock.seconds_at(start_step)
        tracks = [_Track(gstate, clock.copy(), first_mask, start_seconds) for _ in range(batch_size)]
        self.rules = build_rules(self.vocab, batch_size, self.rule_specs, self.rule_settings, self.keep_rules)
        for rule in self.rules:  # the prompt is read once, by row 0, then copied to the others
            for token, state in zip(prompt.ids, states):
                rule.observe(0, state, token, continuation=False)
            for row in range(1, batch_size):
                rule.fork(0, row)
        self._fed = True
        # The prompt in one parallel pass (same noise draws as init_state + one step per token), once: every
        # sequence of the batch continues the same prompt with the same noise, so its state is copied B times
        # (a long prompt does not cost B x its length in logits).
        ids = torch.tensor(prompt.ids, dtype=torch.long, device=self.device).unsqueeze(0)
        logits, self.state = self.model.prefill(ids, generator=self._noise_gen)
        if getattr(self.state, "caches", None) is not None:
            self.state.caches = [_repeat_rows(cache, batch_size) for cache in self.state.caches]
        memory = getattr(self.state, "recall", None)
        if memory is not None:  # the recall head's ring, one own copy per row
            memory.repeat_rows(batch_size)
        return logits[:, -1].expand(batch_size, -1), tracks, start_step

    @torch.inference_mode()
    def state_after(self, ids: list[int]) -> Any:
        """The model's state after ``ids`` alone (one sequence), drawn with the same noise as the prompt
        ``feed_prompt`` reads: e.g. the state at a prompt's start, which a planned form resumes."""
        generator = torch.Generator().manual_seed(self._noise_seed)
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        return self.model.prefill(tokens, generator=generator)[1]

    # --- sampling ------------------------------------------------------------------------------------
    def allowed(self, tracks: list[_Track], logits: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V) mask: the grammar, the first-token rule, EOS when disallowed, then each rule's narrowing in the
        order of the list (the controls, then the musical guards; ``logits`` let them count the probability they
        remove); PAD for finished rows."""
        mask = grammar_mask(self.grammar, [t.state for t in tracks]).numpy().copy()
        for row, track in enumerate(tracks):
            if track.done:
                mask[row] = False
                mask[row, self.vocab.pad_id] = True
            elif track.first_mask is not None and not track.tokens:
                mask[row] &= track.first_mask
        if not self.stop.allow_eos:
            mask[:, self.vocab.eos_id] = False
            for row, track in enumerate(tracks):
                if track.done:
                    mask[row, self.vocab.pad_id] = True
        for row, track in enumerate(tracks):
            if track.done:
                continue
            probs = None
            if logits is not None:
                def probs(allowed: np.ndarray, row: int = row) -> np.ndarray:
                    masked = logits[row].float().cpu().masked_fill(~torch.from_numpy(allowed), float("-inf"))
                    return torch.softmax(masked, dim=-1).numpy()
            for rule in self.rules:
                rule.restrict(row, track.state, mask[row], probs)
        return torch.from_numpy(mask)

    def _finish(self, track: _Track, reason: str) -> None:
        track.done, track.reason = True, reason
        if reason != "eos":
            del track.tokens[track.closable:]
            track.tokens.append(self.vocab.eos_id)

    def _accept(self, row: int, track: _Track, token: int) -> None:
        """Record `token` for one sequence, or stop it (see the module docstring)."""
        if token == self.vocab.eos_id:
            track.tokens.append(token)
            self._finish(track, "eos")
            return
        state = self.grammar.advance(track.state, token)
        stop = self.stop
        if state.phase == Phase.BAR:
            if stop.bars is not None and track.bars >= stop.bars:
                self._finish(track, "bars")
                return
            track.bars += 1
        step = event_step(state)
        if step is not None:
            elapsed = track.clock.seconds_at(step) - track.start_seconds
            if stop.seconds is not None and elapsed >= stop.seconds:
                self._finish(track, "seconds")
                return
            track.last_seconds = elapsed
        track.state = state
        track.tokens.append(token)
        follow_tempo(track.clock, state, int(self.vocab.values[token]), self._bins)
        for rule in self.rules:
            rule.observe(row, state, token, continuation=True)
        if self.grammar.can_end(state):
            track.closable = len(track.tokens)
        if len(track.tokens) >= stop.token_limit:
            self._finish(track, "tokens" if stop.tokens is not None else "max_tokens")

    @torch.inference_mode()
    def step(self, logits: torch.Tensor, tracks: list[_Track]) -> torch.Tensor:
        """Sample one token per sequence from `logits`, record it, and run the model on it -> next logits."""
        return self.advance(self.sample(logits, tracks))

    @torch.inference_mode()
    def advance(self, feed: torch.Tensor) -> torch.Tensor:
        """Run the model on one token per sequence (``sample``'s result) -> next logits."""
        next_logits, self.state = self.model.step(feed.to(self.device), self.state)
        return next_logits

    @torch.inference_mode()
    def sample(self, logits: torch.Tensor, tracks: list[_Track]) -> torch.Tensor:
        """Sample one token per sequence from `logits` and record it -> the tokens to feed the model (PAD for
        finished sequences). Between ``sample`` and ``advance`` a caller may change the model's state (a planned
        form resumes a section's state there)."""
        assert self._fed, "call feed_prompt first"
        logits = logits.float().cpu()
        ctx = StepContext([t.state for t in tracks], [t.done for t in tracks], self.sampling.temperature)
        for rule in self.rules:
            logits = rule.process(logits, ctx)
        tokens = sample_next(logits, self.allowed(tracks, logits), self.sampling, self._sample_gen)
        feed = tokens.clone()
        for row, track in enumerate(tracks):
            if track.done:
                feed[row] = self.vocab.pad_id
                continue
            self._accept(row, track, int(tokens[row]))
            if track.done:
                feed[row] = self.vocab.pad_id
        return feed

    # --- the loop ------------------------------------------------------------------------------------
    def run(self, prompt: Prompt, num_samples: int, progress: bool = True,
            on_progress: Callable[[int, int], None] | None = None) -> list[SampleResult]:
        """Generate `num_samples` continuations of `prompt` as one batch.

        `on_progress(tokens done, token limit)`, when given, is called every 64 steps and once at the end, so a
        caller without a terminal (the web studio) can show how far a long piece has got.
        """
        if int(num_samples) != num_samples or num_samples < 1:
            raise UserError(f"num_samples must be an integer >= 1, got {num_samples}")
        logits, tracks, start_step = self.feed_prompt(prompt, int(num_samples))
        limit = self.stop.token_limit
        bar = tqdm(total=limit, unit="tok", desc=f"generating x{num_samples}", disable=not progress,
                   dynamic_ncols=True, leave=False)
        began, steps = time.perf_counter(), 0
        try:
            while not all(t.done for t in tracks):
                logits = self.step(logits, tracks)
                steps += 1
                bar.update(1)
                if steps % 64 == 0:
                    if on_progress is not None:
                        on_progress(steps, limit)
                    rate = steps * len(tracks) / max(time.perf_counter() - began, 1e-9)
                    bar.set_postfix_str(f"{rate:.0f} tok/s (batch), bars {max(t.bars for t in tracks)}")
        finally:
            bar.close()
        if on_progress is not None:
            on_progress(steps, limit)
        elapsed = max(time.perf_counter() - began, 1e-9)
        self.tokens_per_second = steps * len(tracks) / elapsed
        return self.results(prompt, tracks, start_step)

    def results(self, prompt: Prompt, tracks: list[_Track], start_step: int) -> list[SampleResult]:
        """The finished sequences with their rules' reports."""
        out = []
        for row, t in enumerate(tracks):
            reports = self.reports(row)
            known = {key: reports.pop(key) for key in ("guards", "controls", "tonal_memory")}
            out.append(SampleResult(list(prompt.ids) + t.tokens, len(prompt.ids), start_step, t.reason, t.bars,
                                    t.last_seconds, **known, other_rules=reports))
        return out

    def reports(self, row: int) -> dict[str, dict[str, Any]]:
        """Each reporting rule's report for one sequence, by its key (a rule that is off reports its settings:
        the guards' config, no controls)."""
        out: dict[str, dict[str, Any]] = {"guards": self.guard_config.to_dict(), "controls": {}, "tonal_memory": {}}
        out.update({rule.report_key: rule.report(row) for rule in self.rules if rule.report_key})
        return out

    def rule(self, kind: type) -> DecodeRule | None:
        """The session's rule of this class, or None (e.g. ``session.rule(MusicGuards)``)."""
        return next((rule for rule in self.rules if isinstance(rule, kind)), None)

    def replace_settings(self, kind: type, **settings: Any) -> None:
        """Change a running rule's settings between two steps (:meth:`~.rules.DecodeRule.replace`)."""
        rule = self.rule(kind)
        if rule is None:
            raise ValueError(f"no {kind.__name__} rule in this session")
        rule.replace(**settings)
