"""The studio's Play mode: live streams (musicgen/generation/stream.py), at most ``max_streams`` at once.

Each stream is a :class:`~musicgen.generation.stream.LiveStream`: its own thread and its own copy of the model
(0.3 s to load the shipped one; no state is shared between streams, as with the jobs), writing at most
``ahead_bars`` bars past what its page reports as played. The page reads bars over Server-Sent Events, reports
its position (which doubles as a heartbeat) and steers. A stream with no events connection open and no word
from its page for ``idle_seconds`` is stopped (the tab was closed), so a page that is gone frees its stream
within seconds; a page that comes back within that time (a reload) reconnects and the stream goes on. A
stopped stream keeps its written tokens (a few hundred KB per hour) for Save until ``keep_stopped`` newer
ones have stopped.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import UserError
from ..generation.options import GenerateOptions
from .models import model_name, pick_model
from ..generation.bar_stream import STEERABLE, make_generator, read_prompt
from ..generation.stream import LiveStream
from ..generation.stream_process import ProcessStream
from .edit import checkpoint_tokenizer
from .jobs import Busy
from .params import STUDIO_PROMPT_BARS, _blank, form_defaults

LOG = logging.getLogger("musicgen.studio")
#: fields of a Play press (POST api/streams; the prompt file comes separately)
PLAY_FIELDS = ("seed", "prompt_bars", "prompt_time_signature", "form_recall") + STEERABLE


@dataclass
class StreamEntry:
    id: str
    stream: LiveStream | ProcessStream
    seed: int
    settings: dict[str, Any]
    last_seen: float = field(default_factory=time.monotonic)
    connections: int = 0
    reason: str | None = None  # why it stopped (stop pressed, page gone, server stopping)

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "seed": self.seed, "settings": self.settings, "reason": self.reason,
                **self.stream.snapshot()}


def play_options(fields: Mapping[str, str], prompt_path: str | None, checkpoint: str, device: str) -> GenerateOptions:
    """A Play press's fields -> validated GenerateOptions (the same one-line errors as Generate)."""
    unknown = sorted(set(fields) - set(PLAY_FIELDS) - {"prompt", "model"})
    if unknown:
        raise UserError(f"unknown form field(s): {', '.join(unknown)}")
    get = {name: _blank(fields.get(name)) for name in PLAY_FIELDS}
    default = form_defaults()
    values: dict[str, Any] = {
        "checkpoint": checkpoint, "device": device, "seed": get["seed"], "progress": False, "render": "none",
        "temperature": get["temperature"] or default["temperature"], "top_p": get["top_p"] or default["top_p"],
        "tonal_memory": get["tonal_memory"] or default["tonal_memory"], "chords": get["chords"],
        "chord_tones": get["chord_tones"] or default["chord_tones"], "key": get["key"], "density": get["density"],
        "bpm": get["bpm"], "time_signature": get["time_signature"], "allow_eos": False, "form": get["form"],
        "form_recall": get["form_recall"] if get["form_recall"] is not None else default["form_recall"]}
    if prompt_path is not None:
        values["prompt"] = prompt_path
        values["prompt_bars"] = get["prompt_bars"] or STUDIO_PROMPT_BARS
        values["prompt_time_signature"] = get["prompt_time_signature"] or "file"
    return GenerateOptions.from_mapping(values)


class StreamManager:
    """The studio's live streams (see the module docstring)."""

    def __init__(self, checkpoint: str, device: str, max_streams: int = 4, idle_seconds: float = 5.0,
                 ahead_bars: int = 2, keep_stopped: int = 8, processes: bool = True,
                 models: tuple[tuple[str, str], ...] = ()) -> None:
        """``processes``: each stream in its own process (:class:`ProcessStream`; the default), else on a thread
        of this one (:class:`LiveStream`: they share its interpreter lock, and a failure). ``models``: the
        (name, path) the page may choose with its ``model`` field (:mod:`.models`; ``checkpoint`` is the default)."""
        self.checkpoint, self.device = checkpoint, device
        self.models = models or ((model_name(checkpoint), checkpoint),)
        self.max_streams, self.idle_seconds, self.ahead_bars = int(max_streams), float(idle_seconds), int(ahead_bars)
        self.keep_stopped, self.processes = int(keep_stopped), bool(processes)
        self._entries: dict[str, StreamEntry] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="stream-reaper", daemon=True)
        self._reaper.start()

    def refuse_if_full(self) -> None:
        if self.max_streams <= 0:
            raise Busy("Play is off in this studio (it was started with --max-streams 0)")
        if sum(1 for e in self._entries.values() if e.stream.alive) >= self.max_streams:
            raise Busy(f"{self.max_streams} stream(s) already playing, the most this studio plays at once: stop "
                       "one (or start the studio with --max-streams N)")

    def playing(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.stream.alive)

    def start(self, fields: Mapping[str, str], prompt: bytes | None = None) -> StreamEntry:
        """Start a stream (blocking: loads the model and reads the prompt, about 0.3 s); Busy past the limit."""
        with self._lock:
            self.refuse_if_full()
        fields = dict(fields)
        checkpoint = pick_model(self.models, fields.pop("model", None))
        with tempfile.TemporaryDirectory(prefix="musicgen-stream-") as folder:
            path = None
            if prompt is not None:
                path = str(Path(folder) / "prompt.mid")
                Path(path).write_bytes(prompt)
            options = play_options(fields, path, checkpoint, self.device)
            seed = options.resolved_seed()
            options = GenerateOptions.from_mapping({**options.to_dict(), "seed": seed})
            try:  # checked here (one-line errors at once); the prompt is read before its file goes
                tokenizer = checkpoint_tokenizer(checkpoint)
                options.check_time_signature(tokenizer.vocab)
                options.controls.check(tokenizer.vocab)
                prompt = read_prompt(options, tokenizer)
            except UserError as exc:
                raise UserError(str(exc).replace(str(path), "the prompt") if path else str(exc)) from None
            options = GenerateOptions.from_mapping({**options.to_dict(), "prompt": None, "prompt_bars": None,
                                                    "prompt_time_signature": "file"})
        if self.processes:
            stream: LiveStream | ProcessStream = ProcessStream(make_generator, (options, prompt), self.ahead_bars)
        else:
            generator = make_generator(options, prompt)
            stream = LiveStream(lambda: generator, self.ahead_bars)
        settings = {k: getattr(options, k) for k in STEERABLE}
        with self._lock:
            try:
                self.refuse_if_full()
            except Busy:
                stream.stop()
                raise
            stream_id = uuid.uuid4().hex[:12]
            entry = StreamEntry(stream_id, stream, seed, settings)
            self._entries[stream_id] = entry
        LOG.info("stream %s started (seed %d)", stream_id, seed)
        return entry

    def get(self, stream_id: str) -> StreamEntry | None:
        with self._lock:
            return self._entries.get(stream_id)

    def touch(self, entry: StreamEntry) -> None:
        entry.last_seen = time.monotonic()

    def connect(self, entry: StreamEntry, delta: int) -> None:
        with self._lock:
            entry.connections += delta
        self.touch(entry)

    def stop(self, entry: StreamEntry, reason: str) -> None:
        if entry.stream.alive and entry.reason is None:
            entry.reason = reason
            LOG.info("stream %s stopped: %s", entry.id, reason)
        entry.stream.stop()

    def _reap(self) -> None:
        while not self._closing.wait(min(0.5, self.idle_seconds / 2)):
            now = time.monotonic()
            with self._lock:
                entries = list(self._entries.values())
            for entry in entries:
                if entry.stream.alive and entry.connections <= 0 and now - entry.last_seen > self.idle_seconds:
                    self.stop(entry, f"its page was gone for {self.idle_seconds:g} s")
            with self._lock:
                stopped = [e for e in self._entries.values() if not e.stream.alive]
                for entry in stopped[:max(0, len(stopped) - self.keep_stopped)]:
                    del self._entries[entry.id]

    def shutdown(self) -> None:
        self._closing.set()
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            self.stop(entry, "the studio stopped")
