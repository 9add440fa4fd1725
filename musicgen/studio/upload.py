"""Checks of an uploaded prompt MIDI, before anything is written to disk or handed to the tokenizer.

Why here and not in the tokenizer: a web upload can be anything (a PDF, a truncated file, 2 GB of zeros), and
the page must say which in one line instead of failing deep inside a job. The bytes are checked in memory; the
caller writes accepted ones only into the job's `tempfile.TemporaryDirectory`.
"""

from __future__ import annotations

import io

DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024 * 1024


class UploadError(ValueError):
    """An upload the studio refuses; `status` is the HTTP status to answer with (400, or 413 for too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def size_text(n: int) -> str:
    """Bytes as people read them (1.5 MiB, 300 KiB, 12 bytes)."""
    if n >= 1024 * 1024:
        return f"{n / 1024 / 1024:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.0f} KiB"
    return f"{n} bytes"


def too_large(what: str, limit: int) -> UploadError:
    """The 413 refusal: `what` says how large it is ("'a.mid' is 3.1 MiB")."""
    return UploadError(f"{what}; the studio accepts MIDI files up to {size_text(limit)} (start it with "
                       "--max-upload-mb to change that)", status=413)


def check_size(n_bytes: int, limit: int, name: str = "the prompt") -> None:
    """Refuse a file over the limit (413) before reading it further."""
    if n_bytes > limit:
        raise too_large(f"{name} is {size_text(n_bytes)}", limit)


def check_midi(data: bytes, filename: str, limit: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_whole_notes: int | None = None) -> int:
    """Validate `data` as a MIDI file with notes that spans less than `max_whole_notes` (default: the
    tokenizer's limit); returns its note count, or raises UploadError saying why."""
    label = f"'{filename}'" if filename else "the prompt"
    check_size(len(data), limit, label)
    if not data:
        raise UploadError(f"{label} is empty (0 bytes)")
    if not data.startswith(b"MThd"):
        # RIFF-wrapped MIDI (.rmi) is rare; say what it looks like instead to help the user.
        raise UploadError(f"{label} is not a MIDI file (a Standard MIDI File starts with 'MThd', this one starts "
                          f"with {data[:4]!r}); upload a .mid/.midi file")
    import miditoolkit

    try:
        midi = miditoolkit.MidiFile(file=io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - mido/miditoolkit raise many types (EOFError, OSError, KeyError, ValueError ...)
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UploadError(f"{label} looks like MIDI but cannot be read (corrupt or truncated: {reason})") from None
    notes = sum(len(inst.notes) for inst in midi.instruments)
    if notes == 0:
        raise UploadError(f"{label} holds no notes to continue; leave the prompt empty to start from scratch")
    from ..tokenizer.score import MAX_WHOLE_NOTES, midi_span_whole_notes, span_message

    span = midi_span_whole_notes(midi)
    if span >= MAX_WHOLE_NOTES:  # a few hundred bytes with huge gaps: refused now, not gigabytes later
        raise UploadError(f"{label}: {span_message(span)}")
    if max_whole_notes is not None and span >= max_whole_notes:
        raise UploadError(f"{label}: its last note starts {span:,.0f} whole notes (bars of 4/4) in; the studio "
                          f"takes prompts of up to {max_whole_notes:,} (keep only the part to continue)")
    return notes
