"""A live stream in its own process: the studio's streams each get a core instead of sharing one interpreter.

A fork server that imported torch once forks each stream's child in a fraction of a second; the child runs a
:class:`~.stream.LiveStream` whose bars (with their tokens), status and answers go up a pipe, and whose
position, changes and stop come down it (docs/stream.md says where a stream's time goes).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from array import array
from collections import deque
from typing import Any, Callable, Mapping, Sequence

import torch

from ..config import UserError
from .prompt import Prompt

from .bar_stream import Bar, BarGenerator, decode_bars, midi_bytes
from .stream import LiveStream, wait_for_bars

__all__ = ["ProcessStream", "start_fork_server"]

# --- a stream in its own process ---------------------------------------------------------------------------------
#: modules the fork server imports once, so that each stream's process starts in a fraction of a second
PRELOAD = ["torch", "musicgen.generation.stream_process", "musicgen.generation.api", "musicgen.inference"]


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
        return wait_for_bars(self._cond, self._bars, index, timeout, lambda: self.alive)

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
