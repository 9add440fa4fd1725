"""An endless, steerable stream of music: generated bar by bar, a bounded buffer ahead of whoever plays it.

The recurrent model keeps a constant-size state (linear attention + the recall ring), so a stream can run for
hours at the same cost per token and the same memory. Two layers, both free of any user interface (the studio's
Play mode and ``python -m musicgen.live`` share them):

* :class:`BarGenerator` (synchronous): one :class:`~.session.GenerationSession` of one sequence, EOS off and no
  length limit, stepped token by token (``sample`` then ``advance``). :meth:`BarGenerator.next_bar` runs until
  the bar being written is complete (the next Bar token is sampled) and returns it as a :class:`Bar`: its notes
  with their musical times (seconds from the stream's start, from the same tempo clock the stop rules use:
  Tempo tokens change it), its start, length and metre. :meth:`BarGenerator.steer` changes settings between
  two steps: the sampling (``temperature``, ``top_p``), the tonal memory's strength (``tonal_memory``) and the
  musician's controls (``chords``, ``chord_tones``, ``key``, ``density``, ``bpm``, ``time_signature``) through
  the decode-rule interface (:meth:`~.session.GenerationSession.replace_settings`); the model's state, the
  grammar and every rule's bookkeeping go on. The controls rule is always in the session (inactive until a
  control is set), so a stream started without controls can be steered. Memory stays flat: the session's own
  token list is trimmed to its last :data:`KEEP_TOKENS` tokens, and what was written is kept as 4-byte token
  ids (about 1 MB per hour of music) so :meth:`BarGenerator.midi` can decode any prefix of bars to MIDI.
* :class:`LiveStream` (a thread): writes the bar its consumer is playing and at most ``ahead_bars`` bars after
  it, then waits, so a paused or slow player never makes it run away. The consumer reports how far it has played
  (:meth:`LiveStream.played`), reads bars (:meth:`LiveStream.bars_from`, a bounded window of recent bars for
  reconnects) and steers (:meth:`LiveStream.steer`). A change is applied at the first bar line after the
  music already written: right after the Bar token that opens the next bar (before anything is placed in it),
  or at once where the generator waits at a bar line with its buffer full. ``steer`` returns that bar, so the
  latency is ``from_bar - playing bar``: at most ``ahead_bars + 1`` bars (docs/stream.md).
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import threading
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch

from ..config import UserError
from ..tokenizer import Bins, Phase, TokenType
from .controls import ControlConfig, Controls
from .guards import GuardConfig
from .prompt import Prompt, load_prompt, unconditional_prompt
from .rules import default_rules
from .sampling import SamplingConfig
from .session import GenerationSession, StopConfig
from .tonal import TonalMemory

if TYPE_CHECKING:
    from .options import GenerateOptions

__all__ = ["Bar", "BarGenerator", "make_generator", "read_prompt", "LiveStream", "ProcessStream", "start_fork_server", "STEERABLE", "KEEP_TOKENS", "check_steer"]

#: settings a stream takes while it plays (sampling, tonal memory, the controls)
SAMPLING_KEYS = ("temperature", "top_p")
CONTROL_KEYS = ("chords", "chord_tones", "key", "density", "bpm", "time_signature")
STEERABLE = SAMPLING_KEYS + ("tonal_memory",) + CONTROL_KEYS
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
    return new_sampling, new_controls, change


class BarGenerator:
    """One endless sequence, bar by bar (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, sampling: SamplingConfig, guards: GuardConfig,
                 controls: ControlConfig, seed: int, prompt: Prompt | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.tokenizer, self.vocab = tokenizer, tokenizer.vocab
        controls.check(self.vocab)
        self.controls = controls
        rules = default_rules(sampling, guards, controls)
        # the controls rule always runs (inactive until a control is set), so a stream can be steered
        rules = [(lambda vocab, batch: Controls(vocab, self.controls, batch)) if getattr(f, "__name__", "") ==
                 "control" else f for f in rules]
        assert len(rules) == len(default_rules(sampling, guards, None)), "default_rules changed its factories"
        self.session = GenerationSession(model, tokenizer, sampling, StopConfig(max_tokens=ENDLESS, allow_eos=False),
                                         seed, device, guards, controls, rules=rules)
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
        self._steer_next = {**self._steer_next, **change}

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
                        options.resolved_seed(), prompt, loaded.device)


class LiveStream:
    """A :class:`BarGenerator` on its own thread, at most ``ahead_bars`` bars ahead of its consumer."""

    def __init__(self, make: Callable[[], BarGenerator], ahead_bars: int = 2, keep_bars: int = 256,
                 name: str = "stream") -> None:
        if ahead_bars < 1:
            raise UserError("ahead_bars must be >= 1")
        self.ahead_bars, self.keep_bars = int(ahead_bars), int(keep_bars)
        self.generator: BarGenerator | None = None
        self.status = "starting"  # starting -> playing -> stopped | error
        self.error: str | None = None
        self._make = make
        self._cond = threading.Condition()
        self._bars: deque[Bar] = deque(maxlen=self.keep_bars)
        self._played = 0.0  # the consumer's position, in bars from the stream's start
        self._pending: dict[str, Any] = {}
        self._pending_configs: tuple[SamplingConfig, ControlConfig] | None = None
        self._at_line = False  # waiting at a bar line, nothing of the open bar written yet
        self._stop = False
        self.changes: deque[dict[str, Any]] = deque(maxlen=64)  # applied changes (bar, settings, latency)
        self.started = time.time()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # --- the generating thread -----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            generator = self._make()
            with self._cond:
                self.generator = generator
                if not self._stop:
                    self.status = "playing"
                self._cond.notify_all()
            while True:
                with self._cond:
                    while not self._stop and generator.bars - 1 > int(self._played) + self.ahead_bars:
                        self._at_line = True
                        self._cond.wait(0.5)
                    self._at_line = False
                    if self._stop:
                        return
                    pending, configs = self._pending, self._pending_configs
                    self._pending, self._pending_configs = {}, None
                if pending and configs is not None:
                    generator.steer(pending, *configs)
                bar = generator.next_bar()
                with self._cond:
                    self._bars.append(bar)
                    self._cond.notify_all()
        except Exception as exc:  # noqa: BLE001 - the consumer sees it as the stream's error
            with self._cond:
                self.status, self.error = "error", f"{type(exc).__name__}: {exc}"
                self._cond.notify_all()
        finally:
            with self._cond:
                if self.status != "error":
                    self.status = "stopped"
                self._cond.notify_all()

    # --- the consumer --------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self.status in ("starting", "playing")

    @property
    def bars_written(self) -> int:
        """Finished bars."""
        with self._cond:
            return self._bars[-1].index + 1 if self._bars else 0

    @property
    def played_bars(self) -> float:
        return self._played

    def played(self, bar: float) -> None:
        """The consumer has played up to ``bar`` (bars from the start, fractional): the generator may go on to
        ``ahead_bars`` bars past it. Positions never go back."""
        with self._cond:
            if bar > self._played:
                self._played = float(bar)
                self._cond.notify_all()

    def bars_from(self, index: int, timeout: float = 0.0) -> list[Bar]:
        """Finished bars from ``index`` on (from the oldest kept when ``index`` is older), waiting up to
        ``timeout`` seconds for the first one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                out = [bar for bar in self._bars if bar.index >= index]
                left = deadline - time.monotonic()
                if out or left <= 0 or not self.alive:
                    return out
                self._cond.wait(left)

    def steer(self, settings: Mapping[str, Any]) -> dict[str, Any]:
        """Queue a change for the first bar line after the music already written; returns ``from_bar`` (the
        bar it takes effect in), ``playing_bar`` and ``latency_bars``. UserError when invalid or not playing."""
        with self._cond:
            while self.status == "starting":
                self._cond.wait(0.5)
            generator = self.generator
            if generator is None or not self.alive:
                raise UserError("this stream is not playing")
            sampling, controls = self._pending_configs or (generator.session.sampling, generator.controls)
            sampling, controls, change = check_steer(settings, sampling, controls, generator.vocab)
            self._pending = {**self._pending, **change}
            self._pending_configs = (sampling, controls)
            # waiting at a bar line: the bar just opened (empty); else the bar after the one being written
            from_bar = generator.bars - 1 if self._at_line else generator.bars
            playing = int(self._played)
            record = {"from_bar": from_bar, "playing_bar": playing, "latency_bars": from_bar - playing,
                      "settings": change}
            self.changes.append(record)
            self._cond.notify_all()
            return record

    def stop(self, wait: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(wait)

    def midi_bytes(self, bars: int | None = None) -> bytes:
        """What was written up to ``bars`` finished bars (all of them by default) as a MIDI file."""
        generator = self.generator
        if generator is None:
            raise UserError("the stream has not started yet")
        # a consistent prefix while the thread writes on: a bar's offset is appended after its token
        offsets = generator.bar_offsets[:]
        tokens = generator.tokens[:]
        return midi_bytes(decode_bars(generator.tokenizer, generator.prompt, generator.start_step, tokens, offsets,
                                      bars))

    def snapshot(self) -> dict[str, Any]:
        generator = self.generator
        return {"status": self.status, "error": self.error, "bars": self.bars_written,
                "played_bars": round(self._played, 3), "ahead_bars": self.ahead_bars,
                "tokens": len(generator.tokens) if generator else 0,
                "tokens_per_second": round(generator.tokens_per_second, 1) if generator else 0.0,
                "changes": list(self.changes)[-8:]}


# --- a stream in its own process ---------------------------------------------------------------------------------
#: modules the fork server imports once, so that each stream's process starts in a fraction of a second
PRELOAD = ["torch", "musicgen.generation.stream", "musicgen.generation.api", "musicgen.inference"]


def start_fork_server(modules: Sequence[str] = ()) -> None:
    """Start the fork server and wait until it can fork (about 3 s: it imports torch, and ``modules`` (where a
    stream's factory lives), once), so that the first stream starts fast."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD + list(modules))
    probe = context.Process(target=time.sleep, args=(0,), daemon=True)
    probe.start()
    probe.join()


def _serve(conn: Any, factory: Callable[..., BarGenerator], args: tuple, ahead_bars: int, keep_bars: int) -> None:
    """The child's side of :class:`ProcessStream`: a :class:`LiveStream` whose bars (with their tokens), status
    and answers go up the pipe, and whose position, changes and stop come down it."""
    torch.set_num_threads(1)  # one core per stream: the machine's cores go to the streams, not to one of them
    made: dict[str, BarGenerator] = {}
    lock = threading.Lock()

    def send(message: tuple) -> None:
        with lock:
            conn.send(message)

    def make() -> BarGenerator:
        made["generator"] = factory(*args)
        g = made["generator"]
        send(("ready", g.tokenizer, g.prompt, g.start_step))
        return g

    stream = LiveStream(make, ahead_bars, keep_bars)
    sent, last_status, sent_tokens = 0, 0.0, 0
    try:
        while True:
            for bar in stream.bars_from(sent):
                g = made["generator"]
                end = g.bar_offsets[bar.index + 1] if bar.index + 1 < len(g.bar_offsets) else len(g.tokens)
                send(("bar", bar, g.tokens[sent_tokens:end].tobytes()))
                sent, sent_tokens = bar.index + 1, end
            now = time.monotonic()
            if now - last_status > 0.25:
                send(("status", stream.snapshot()))
                last_status = now
            if not stream.alive and sent >= stream.bars_written:
                send(("end", stream.snapshot()))
                return
            if not conn.poll(0.02):
                continue
            message = conn.recv()
            if message[0] == "played":
                stream.played(message[1])
            elif message[0] == "steer":
                try:
                    send(("reply", message[1], stream.steer(message[2])))
                except UserError as exc:
                    send(("reply", message[1], {"error": str(exc)}))
            elif message[0] == "stop":
                stream.stop()
    except (EOFError, OSError, KeyboardInterrupt):  # the parent is gone, or Ctrl-C in the terminal
        pass
    finally:
        stream.stop()


class ProcessStream:
    """A :class:`LiveStream` in its own process (the studio's streams), with the same interface.

    Why: no interpreter lock shared between streams (a step's grammar, rules and sampling hold it), and a stream
    that fails cannot take its host down (benchmarks/stream.py measures processes and threads). The
    child (forked from a fork server that imported torch once) loads the model and sends every finished bar
    with its tokens; this side keeps them (4 bytes a token) and decodes Save itself, also after the stream has
    stopped. A child whose parent dies sees its pipe close and stops."""

    def __init__(self, factory: Callable[..., BarGenerator], args: tuple = (), ahead_bars: int = 2,
                 keep_bars: int = 256, name: str = "stream") -> None:
        if ahead_bars < 1:
            raise UserError("ahead_bars must be >= 1")
        self.ahead_bars, self.keep_bars = int(ahead_bars), int(keep_bars)
        self.status, self.error = "starting", None
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()
        self._bars: deque[Bar] = deque(maxlen=self.keep_bars)
        self._tokens, self._ends = array("i"), array("q")
        self._decode: tuple[Any, Prompt, int] | None = None
        self._played = 0.0
        self._snapshot: dict[str, Any] = {}
        self._replies: dict[int, dict[str, Any]] = {}
        self._asks = 0
        self.changes: deque[dict[str, Any]] = deque(maxlen=64)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD + [factory.__module__])
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, factory, args, self.ahead_bars, self.keep_bars),
                                        name=name, daemon=True)
        self._process.start()
        child.close()
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                message = self._conn.recv()
                with self._cond:
                    kind = message[0]
                    if kind in ("ready", "bar") and self.status == "starting":
                        self.status = "playing"
                    if kind == "ready":
                        self._decode = (message[1], message[2], message[3])
                    elif kind == "bar":
                        self._bars.append(message[1])
                        self._tokens.frombytes(message[2])
                        self._ends.append(len(self._tokens))
                    elif kind in ("status", "end"):
                        self._snapshot = message[1]
                        self.status, self.error = message[1]["status"], message[1]["error"]
                        if kind == "end" and self.status not in ("stopped", "error"):
                            self.status = "stopped"
                    elif kind == "reply":
                        self._replies[message[1]] = message[2]
                    self._cond.notify_all()
                    if kind == "end":
                        return
        except (EOFError, OSError):
            with self._cond:
                if self.status in ("starting", "playing"):
                    self.status, self.error = "error", "the stream's process ended"
                self._cond.notify_all()
        finally:
            self._conn.close()

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the child is gone (its end arrives through the reader)
                pass

    @property
    def alive(self) -> bool:
        return self.status in ("starting", "playing")

    @property
    def bars_written(self) -> int:
        with self._cond:
            return len(self._ends)

    @property
    def played_bars(self) -> float:
        return self._played

    def played(self, bar: float) -> None:
        if bar > self._played:
            self._played = float(bar)
            self._send(("played", self._played))

    def bars_from(self, index: int, timeout: float = 0.0) -> list[Bar]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                out = [bar for bar in self._bars if bar.index >= index]
                left = deadline - time.monotonic()
                if out or left <= 0 or not self.alive:
                    return out
                self._cond.wait(left)

    def steer(self, settings: Mapping[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        with self._cond:
            while self.status == "starting":
                self._cond.wait(0.5)
            if not self.alive:
                raise UserError("this stream is not playing")
            self._asks += 1
            ask = self._asks
        self._send(("steer", ask, dict(settings)))
        deadline = time.monotonic() + timeout
        with self._cond:
            while ask not in self._replies:
                left = deadline - time.monotonic()
                if left <= 0 or not self.alive:
                    raise UserError("this stream is not playing")
                self._cond.wait(left)
            record = self._replies.pop(ask)
        if "error" in record:
            raise UserError(record["error"])
        self.changes.append(record)
        return record

    def stop(self, wait: float = 5.0) -> None:
        self._send(("stop",))
        self._reader.join(wait)
        self._process.join(1.0)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(1.0)
        with self._cond:
            if self.status in ("starting", "playing"):
                self.status = "stopped"
            self._cond.notify_all()

    def midi_bytes(self, bars: int | None = None) -> bytes:
        with self._cond:
            if self._decode is None:
                raise UserError("the stream has not started yet")
            tokens, ends = self._tokens[:], self._ends[:]
        tokenizer, prompt, start_step = self._decode
        offsets = array("q", [0]) + ends  # decode_bars wants where each bar starts, then the open bar's start
        return midi_bytes(decode_bars(tokenizer, prompt, start_step, tokens, offsets,
                                      bars))

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            snap = dict(self._snapshot) if self._snapshot else {"tokens": 0, "tokens_per_second": 0.0}
            snap.update(status=self.status, error=self.error, bars=len(self._ends), played_bars=round(self._played, 3),
                        ahead_bars=self.ahead_bars, changes=list(self.changes)[-8:])
        return snap
