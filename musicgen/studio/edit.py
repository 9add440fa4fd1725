"""Editing a shown piece: "select bars on its piano roll, press Regenerate these bars".

The server keeps every piece's MIDI file in its job's folder; an edit is a new job whose prompt is a copy of
that file and whose options say ``infill="a-b"`` (the library's infilling, musicgen/generation/infill.py: the
chosen bars are rewritten, every other bar stays note for note). This module holds what the studio adds:

* **the piece's own bars** (:func:`bar_ticks`): the bars the infill option counts, i.e. the checkpoint
  tokenizer's bars of that MIDI file read with its own metre events (``prompt_time_signature=file``, as an
  edit job reads it). The page numbers and selects bars from these, never from its own guess, so bar 5 on the
  roll is bar 5 for ``infill``.
* **the check at submission** (:func:`check_ranges`): the library's own checks of the ranges against the piece
  (beyond its end, a metre change inside the range), run before the job is queued, so a bad range is a
  one-line 400 like every other bad value and not a failed job.
* **names** (:func:`edit_name`): ``variation_01`` edited twice downloads as ``variation_01_edit2_00.mid``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from ..config import UserError

#: the metre an edit reads its piece with: the piece's own events (the studio wrote the file)
EDIT_METRE = "file"


@functools.lru_cache(maxsize=4)
def _vocab_config(checkpoint: str) -> Any:
    from ..inference import load_checkpoint

    return load_checkpoint(checkpoint).vocab.config


def checkpoint_tokenizer(checkpoint: str | Path) -> Any:
    """A tokenizer of the checkpoint's vocabulary (the one generation uses); the config is read once per file."""
    from ..tokenizer import REMITokenizer

    return REMITokenizer(_vocab_config(str(checkpoint)))


def bar_ticks(midi_path: str | Path, tokenizer: Any) -> list[tuple[int, int]]:
    """(start tick, end tick) of each bar of the file as ``infill`` numbers them (bar 1 first); a UserError
    (one line naming the file) where the tokenizer cannot read it or it holds no notes."""
    from ..generation.infill import load_piece

    midi, piece = load_piece(Path(midi_path), tokenizer, EDIT_METRE)
    per_step = (midi.ticks_per_beat or 480) / tokenizer.config.steps_per_quarter
    return [(int(round(start * per_step)), int(round((start + length) * per_step)))
            for start, length in zip(piece.starts, piece.lengths)]


def check_ranges(midi_path: str | Path, infill: str, tokenizer: Any, shown_name: str) -> None:
    """The library's checks of ``infill`` against the piece in ``midi_path`` (bars beyond its end, a metre
    change inside a range); messages name the piece as ``shown_name``, never the server's path."""
    from ..generation.bar_ranges import parse_bar_ranges
    from ..generation.infill import load_piece, plan_gaps

    path = Path(midi_path)
    try:
        _, piece = load_piece(path, tokenizer, EDIT_METRE)
        plan_gaps(piece, parse_bar_ranges(infill), Path(shown_name))
    except UserError as exc:
        raise UserError(str(exc).replace(str(path), shown_name)) from None


def edit_name(base: str, edit: int) -> str:
    """The file-name prefix of the `edit`-th edit of variation `base` (generation appends ``_00``)."""
    return f"{base}_edit{edit}"
