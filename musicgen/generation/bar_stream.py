"""An endless, steerable sequence of music written bar by bar: the synchronous layer of a stream.

The recurrent model keeps a constant-size state (linear attention + the recall ring), so a stream can run for
hours at the same cost per token and the same memory. :class:`BarGenerator` is one
:class:`~.session.GenerationSession` of one sequence, EOS off and no length limit, stepped token by token
(``sample`` then ``advance``). :meth:`BarGenerator.next_bar` runs until the bar being written is complete (the
next Bar token is sampled) and returns it as a :class:`Bar`: its notes with their musical times (seconds from
the stream's start, from the same tempo clock the stop rules use: Tempo tokens change it), its start, length
and metre. :meth:`BarGenerator.steer` changes settings between two steps: the sampling (``temperature``,
``top_p``), the tonal memory's strength (``tonal_memory``) and the musician's controls (``chords``,
``chord_tones``, ``key``, ``density``, ``bpm``, ``time_signature``) through the decode-rule interface
(:meth:`~.session.GenerationSession.replace_settings`); the model's state, the grammar and every rule's
bookkeeping go on. The controls rule is always in the session (inactive until a control is set), so a stream
started without controls can be steered. Memory stays flat: the session's own token list is trimmed to its last
:data:`KEEP_TOKENS` tokens, and what was written is kept as 4-byte token ids (about 1 MB per hour of music) so
:meth:`BarGenerator.midi` can decode any prefix of bars to MIDI. The threaded player is
:class:`~.stream.LiveStream`; a stream in its own process is :class:`~.stream_process.ProcessStream`.
"""

from __future__ import annotations

import dataclasses
import io
import time
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

import torch

from ..config import UserError
from ..tokenizer import Bins, Phase, TokenType
from .controls import ControlConfig, Controls
from .form_plan import DEFAULT_FORM_RECALL, FormCursor, parse_form
from .guards import GuardConfig
from .prompt import Prompt, load_prompt, unconditional_prompt
from .sampling import SamplingConfig
from .session import GenerationSession, StopConfig
from .tonal import TonalMemory

if TYPE_CHECKING:
    from .options import GenerateOptions

__all__ = ["Bar", "BarGenerator", "check_steer", "decode_bars", "make_generator", "midi_bytes", "read_prompt", "STEERABLE", "KEEP_TOKENS"]

#: settings a stream takes while it plays (sampling, tonal memory, the controls)
SAMPLING_KEYS = ("temperature", "top_p")
CONTROL_KEYS = ("chords", "chord_tones", "key", "density", "bpm", "time_signature")
#: a planned form (form_plan.py), repeated for ever; a new plan starts at the bar after the one carrying it
FORM_KEYS = ("form",)
STEERABLE = SAMPLING_KEYS + ("tonal_memory",) + CONTROL_KEYS + FORM_KEYS
#: tokens the session's own per-sequence list keeps (it only needs the last event boundary to close a piece,
#: which an endless stream never does)
KEEP_TOKENS = 4096
#: the session's token cap, never reached by a stream (its list is trimmed)
ENDLESS = 1 << 62


@dataclass
class Bar:
    """One finished bar of a stream. Times are seconds from the stream's start; ``notes`` are
    ``(onset, duration, pitch, velocity, program)`` with program 128 for drums."""

    index: int  # 0 = the stream's first bar
    start: float
    seconds: float  # its length (to the next bar line)
    metre: tuple[int, int]
    bpm: float  # the tempo at its end
    notes: list[tuple[float, float, int, int, int]]
    tokens: int
    steer: dict[str, Any] = field(default_factory=dict)  # settings changed from this bar on

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": round(self.start, 4), "seconds": round(self.seconds, 4),
                "metre": list(self.metre), "bpm": round(self.bpm, 2), "tokens": self.tokens,
                "notes": [[round(o, 4), round(d, 4), p, v, g] for o, d, p, v, g in self.notes],
                "steer": self.steer}


def _blank(value: Any) -> Any:
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def check_steer(settings: Mapping[str, Any], sampling: SamplingConfig, controls: ControlConfig,
                vocab: Any) -> tuple[SamplingConfig, ControlConfig, dict[str, Any]]:
    """Validate a change before it is queued: (new sampling, new controls, the change with blanks as None).
    A blank control turns it off; a blank sampling value is refused. One-line UserError on anything bad."""
    unknown = sorted(set(settings) - set(STEERABLE))
    if unknown:
        raise UserError(f"cannot change {', '.join(unknown)} while playing (steerable: {', '.join(STEERABLE)})")
    change = {k: _blank(v) for k, v in settings.items()}
    if not change:
        raise UserError("nothing to change")
    for key in SAMPLING_KEYS + ("tonal_memory",):
        if key in change and change[key] is None:
            raise UserError(f"{key}: give a value")
    new_sampling = dataclasses.replace(sampling, **{k: v for k, v in change.items()
                                                     if k in SAMPLING_KEYS + ("tonal_memory",)})
    new_controls = dataclasses.replace(controls, **{k: v for k, v in change.items() if k in CONTROL_KEYS})
    if new_controls.chord_tones is None:
        new_controls = dataclasses.replace(new_controls, chord_tones="only")
    new_controls.check(vocab)
    if change.get("form") is not None:
        parse_form(change["form"])
    return new_sampling, new_controls, change


class BarGenerator:
    """One endless sequence, bar by bar (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingConfig, guards: GuardConfig,
                 controls: ControlConfig, seed: int, prompt: Prompt | None = None,
                 device: str | torch.device = "cpu", form: str | None = None,
                 form_recall: float = DEFAULT_FORM_RECALL) -> None:
        self.tokenizer, self.vocab = tokenizer, tokenizer.vocab
        controls.check(self.vocab)
        self.controls = controls
        # the controls rule always runs (inactive until a control is set), so a stream can be steered
        self.session = GenerationSession(model, tokenizer, sampling, StopConfig(max_tokens=ENDLESS, allow_eos=False),
                                         seed, device, guards, controls, keep_rules=("controls",))
        self.prompt = prompt if prompt is not None and not prompt.is_empty else unconditional_prompt(tokenizer)
        self._bins = Bins(tokenizer.config)
        self._types = self.vocab.types
        self._values = self.vocab.values
        self._logits, self._tracks, self.start_step = self.session.feed_prompt(self.prompt, 1)
        if self.session.rule(Controls) is None:
            raise RuntimeError("the controls rule is missing")
        self.tokens = array("i")  # every continuation token
        self.bar_offsets = array("q")  # index in `tokens` of each bar's Bar token
        self.steps = 0
        self.elapsed = 0.0  # seconds spent sampling
        self._notes: list[tuple[float, float, int, int, int]] = []
        self._bar_start = 0.0
        self._bar_tokens = 0
        self._open = False  # a bar has been opened (its Bar token sampled)
        self._metre: tuple[int, int] = (4, 4)
        self._steer_next: dict[str, Any] = {}
        self.form_recall = float(form_recall)
        self.form: FormCursor | None = None  # the planned form, repeated (FormCursor with cycle)
        if form is not None:
            self._plan(form)

    @property
    def track(self) -> Any:
        return self._tracks[0]

    @property
    def bars(self) -> int:
        """Bars opened so far."""
        return len(self.bar_offsets)

    def _seconds(self, step: int) -> float:
        return self.track.clock.seconds_at(step) - self.track.start_seconds

    def _step(self) -> int:
        """Sample one token, record it, run the model on it; returns the token."""
        began = time.perf_counter()
        feed = self.session.sample(self._logits, self._tracks)
        track = self.track
        token = int(track.tokens[-1])
        if self.form is not None and self._types[token] == TokenType.BAR:  # before the model reads the Bar
            bar = len(self.bar_offsets) + 1
            self.form.at_bar(bar, bar, self.session.state, getattr(self.session.state, "recall", None))
        self._logits = self.session.advance(feed)
        self.elapsed += time.perf_counter() - began
        self.steps += 1
        if len(track.tokens) > 2 * KEEP_TOKENS:  # constant memory: the session needs only the recent tokens
            cut = len(track.tokens) - KEEP_TOKENS
            del track.tokens[:cut]
            track.closable = max(0, track.closable - cut)
        self.tokens.append(token)
        return token

    def next_bar(self) -> Bar:
        """Generate until the bar being written is complete (the next Bar token) -> that bar."""
        while True:
            token = self._step()
            state = self.track.state
            kind = int(self._types[token])
            if kind == TokenType.BAR:
                bar = self._close(state) if self._open else None
                self.bar_offsets.append(len(self.tokens) - 1)
                self._open = True
                self._bar_start = self._seconds(state.bar_start)
                self._bar_tokens = 1
                self._notes = []
                if bar is not None:
                    return bar
                continue
            self._bar_tokens += 1
            self._metre = tuple(state.metre)
            if kind == TokenType.DURATION and state.phase == Phase.DURATION:
                onset = state.step
                steps = int(self._values[token])
                start = self._seconds(onset)
                self._notes.append((start, self._seconds(onset + steps) - start, int(state.pitch),
                                    int(self._bins.velocity_of_bin[state.velocity]), int(state.program)))

    def _close(self, state: Any) -> Bar:
        """The bar that the Bar token just sampled ends (``state``: the grammar after that token)."""
        start = self._bar_start
        bar = Bar(len(self.bar_offsets) - 1, start, self._seconds(state.bar_start) - start, self._metre,
                  float(self.track.clock.bpm), self._notes, self._bar_tokens, self._steer_next)
        self._steer_next = {}
        return bar

    def steer(self, change: Mapping[str, Any], sampling: SamplingConfig | None = None,
              controls: ControlConfig | None = None) -> None:
        """Apply a change (validated by :func:`check_steer`, which gives ``sampling`` and ``controls``; given
        only ``change``, it is validated here) between two steps; the next bar to close records it."""
        if sampling is None or controls is None:
            sampling, controls, change = check_steer(change, self.session.sampling, self.controls, self.vocab)
        session = self.session
        if "tonal_memory" in change:
            session.replace_settings(TonalMemory, strength=sampling.tonal_memory)
        session.sampling = sampling
        if any(k in change for k in CONTROL_KEYS):
            session.replace_settings(Controls, config=controls)
            self.controls = controls
        if "form" in change:
            self._plan(change["form"])
        self._steer_next = {**self._steer_next, **change}

    def _plan(self, form: str | None) -> None:
        """Follow ``form`` (repeated) from the next bar line on; None stops following a plan."""
        memory = getattr(self.session.state, "recall", None)
        if form is None:
            self.form = None
            if memory is not None:
                memory.focus_lag = None
            return
        sections, origin = parse_form(form), len(self.bar_offsets) + 1
        self.form = self.form.replaced(sections, origin) if self.form is not None else \
            FormCursor(sections, self.form_recall, origin, cycle=True)

    @property
    def tokens_per_second(self) -> float:
        return self.steps / max(self.elapsed, 1e-9)

    def midi(self, bars: int | None = None) -> Any:
        """The first ``bars`` finished bars (all of them by default) as a miditoolkit MidiFile (the prompt's
        notes left out)."""
        return decode_bars(self.tokenizer, self.prompt, self.start_step, self.tokens, self.bar_offsets, bars)


def decode_bars(tokenizer: Any, prompt: Prompt, start_step: int, tokens: array, bar_offsets: array,
                bars: int | None = None) -> Any:
    """A stream's first ``bars`` finished bars (all of them by default: the last bar opened is still being
    written) as a miditoolkit MidiFile, decoded by the tokenizer after the prompt, whose notes are left out."""
    from .api import drop_before

    done = max(0, len(bar_offsets) - 1)
    bars = done if bars is None else max(0, min(int(bars), done))
    end = bar_offsets[bars] if bars < len(bar_offsets) else len(tokens)
    midi = tokenizer.decode(list(prompt.ids) + tokens[:end].tolist())
    ticks_per_step = midi.ticks_per_beat // tokenizer.config.steps_per_quarter
    if len(prompt.ids) > 1:
        midi = drop_before(midi, start_step * ticks_per_step)
    return midi


def midi_bytes(midi: Any) -> bytes:
    buffer = io.BytesIO()
    midi.dump(file=buffer)
    return buffer.getvalue()


def read_prompt(options: GenerateOptions, tokenizer: Any) -> Prompt | None:
    """The prompt of these options, read with the checkpoint's tokenizer (None without one; UserError when bad)."""
    if not options.prompt:
        return None
    return load_prompt(options.prompt, tokenizer, options.prompt_bars, options.prompt_seconds,
                       options.prompt_time_signature)


def make_generator(options: GenerateOptions, prompt: Prompt | None = None) -> BarGenerator:
    """Load the model: one endless sequence of these options, continuing ``prompt`` (already read), else the
    options' own prompt file (UserError when bad). A stream's process calls it (module level: picklable)."""
    from ..inference import load_model, resolve_checkpoint, resolve_device

    loaded = load_model(resolve_checkpoint(options.checkpoint), resolve_device(options.device))
    options = options.with_checkpoint_defaults(loaded.checkpoint.decoding_defaults)
    options.check_time_signature(loaded.vocab)
    if prompt is None:
        prompt = read_prompt(options, loaded.tokenizer)
    return BarGenerator(loaded.model, loaded.tokenizer, options.sampling, options.guards, options.controls,
                        options.resolved_seed(), prompt, loaded.device, options.form, options.form_recall)
