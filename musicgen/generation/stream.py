"""A live stream: a :class:`~.bar_stream.BarGenerator` on its own thread, a bounded buffer ahead of its player.

:class:`LiveStream` writes the bar its consumer is playing and at most ``ahead_bars`` bars after it, then waits,
so a paused or slow player never makes it run away. The consumer reports how far it has played
(:meth:`LiveStream.played`), reads bars (:meth:`LiveStream.bars_from`, a bounded window of recent bars for
reconnects) and steers (:meth:`LiveStream.steer`). A change is applied at the first bar line after the music
already written: right after the Bar token that opens the next bar (before anything is placed in it), or at
once where the generator waits at a bar line with its buffer full. ``steer`` returns that bar, so the latency
is ``from_bar - playing bar``: at most ``ahead_bars + 1`` bars (docs/stream.md). The studio's Play mode and
``python -m musicgen.live`` share it; :mod:`.stream_process` runs one in a child process.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any, Callable, Mapping


from ..config import UserError
from .controls import ControlConfig
from .sampling import SamplingConfig

from .bar_stream import Bar, BarGenerator, check_steer, decode_bars, midi_bytes

__all__ = ["LiveStream"]

def wait_for_bars(cond: threading.Condition, bars: deque[Bar], index: int, timeout: float,
                  alive: Callable[[], bool]) -> list[Bar]:
    """The bars of ``bars`` from ``index`` on, waiting on ``cond`` up to ``timeout`` seconds for the first one
    while ``alive()``: how a thread's stream and a process's stream both serve their readers."""
    deadline = time.monotonic() + timeout
    with cond:
        while True:
            out = [bar for bar in bars if bar.index >= index]
            left = deadline - time.monotonic()
            if out or left <= 0 or not alive():
                return out
            cond.wait(left)


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
        return wait_for_bars(self._cond, self._bars, index, timeout, lambda: self.alive)

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
