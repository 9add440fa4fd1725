"""Reading MIDI files with one clear error type instead of whatever mido happens to raise."""

from __future__ import annotations

import warnings
from pathlib import Path

import miditoolkit

from .errors import MidiReadError

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")


def load_midi(path: str | Path) -> miditoolkit.MidiFile:
    """Parse `path` with miditoolkit; any failure becomes a `MidiReadError` naming the file and the cause."""
    path = Path(path)
    if not path.exists():
        raise MidiReadError(path, "no such file")
    if path.is_dir():
        raise MidiReadError(path, "is a folder, not a MIDI file")
    try:
        size = path.stat().st_size
        if size == 0:
            raise MidiReadError(path, "empty file (0 bytes)")
        with path.open("rb") as handle:
            magic = handle.read(4)
        if magic != b"MThd":
            raise MidiReadError(path, "not a MIDI file (no MThd header)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return miditoolkit.MidiFile(str(path))
    except MidiReadError:
        raise
    except EOFError as exc:
        raise MidiReadError(path, f"truncated or corrupt data ({str(exc) or 'unexpected end of file'})") from None
    except Exception as exc:  # noqa: BLE001 - mido raises OSError/ValueError/KeyError/IndexError for corrupt data
        raise MidiReadError(path, f"corrupt MIDI data ({type(exc).__name__}: {exc})") from None


def find_midi_files(root: str | Path) -> list[Path]:
    """All MIDI files below `root` (or `root` itself when it is a file), sorted for a stable order."""
    root = Path(root)
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)
