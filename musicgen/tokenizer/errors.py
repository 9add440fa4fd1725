"""The one error type for MIDI files that cannot be read, so callers catch one thing and users see one line."""

from __future__ import annotations

from pathlib import Path


class MidiReadError(Exception):
    """A MIDI file could not be read. The message names the file and the cause, on one line."""

    def __init__(self, path: str | Path, cause: str) -> None:
        self.path = str(path)
        self.cause = " ".join(str(cause).split()) or "unknown error"
        super().__init__(f"{self.path}: cannot read MIDI: {self.cause}")
