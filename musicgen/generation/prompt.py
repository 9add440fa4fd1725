"""Prompt MIDI -> token ids in the checkpoint's vocabulary, optionally cut to its first bars or seconds.

The prompt is tokenized exactly as training data is (`REMITokenizer(vocab.config).encode`), with its final
EOS dropped so the model continues it. Cutting happens on the token stream, at event boundaries:
- `prompt_bars=N` cuts before the (N+1)-th Bar token, so the prompt is N whole bars;
- `prompt_seconds=S` cuts before the first Bar or Position whose onset is at or after S seconds under the
  prompt's own tempo map, so every note starting before S is kept (Tempo/Chord tokens go with their
  Position).
`ends_at_bar_line` records whether the prompt stops at a bar line (bar cut, a seconds cut that fell on a
Bar, or an uncut prompt): the continuation is then made to start with a Bar, so "the continuation" is
exactly the bars after the prompt. Otherwise it must start with a new Position or Bar, never with more
notes at the prompt's last position, so prompt and continuation never share an onset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import UserError
from ..tokenizer import Bins, MidiReadError, Phase, REMITokenizer, TokenType, parse_time_signature
from .timeline import TokenClock, event_step, follow_tempo

TIME_SIGNATURE_CHOICES = "file (the prompt's own metre events), index (POP909 index.tsv beside it) or e.g. 3/4"


@dataclass
class Prompt:
    """Token ids the continuation follows (BOS first, no EOS) and where the continuation starts."""

    ids: list[int]
    path: Path | None = None
    n_bars: int = 0
    n_notes: int = 0
    ends_at_bar_line: bool = True
    time_signature: tuple[int, int] | None = None

    @property
    def is_empty(self) -> bool:
        """Only BOS: unconditional generation."""
        return len(self.ids) <= 1


def unconditional_prompt(tokenizer: REMITokenizer) -> Prompt:
    return Prompt([tokenizer.vocab.bos_id])


def resolve_time_signature(option: str | None, path: Path) -> tuple[int, int] | None:
    """The metre to read the prompt with: None = the file's own events (see TIME_SIGNATURE_CHOICES)."""
    if option is None or str(option) == "file":
        return None
    if str(option) == "index":
        from ..data.sources import read_pop909_metres

        if not path.stem.isdigit():
            raise UserError(f"prompt_time_signature=index needs a POP909 file named by song id, got {path.name}")
        metres = read_pop909_metres(path.parent)
        if int(path.stem) not in metres:
            raise UserError(f"prompt {path}: song {int(path.stem)} has no row in {path.parent / 'index.tsv'}")
        return metres[int(path.stem)]
    try:
        return parse_time_signature(str(option))
    except ValueError:
        raise UserError(f"prompt_time_signature={option!r}: use {TIME_SIGNATURE_CHOICES}") from None


def _count(tokenizer: REMITokenizer, ids: list[int], kind: TokenType) -> int:
    span = tokenizer.vocab.ranges[kind]
    return sum(1 for t in ids if span.start <= t < span.stop)


def cut_to_bars(tokenizer: REMITokenizer, ids: list[int], bars: int) -> list[int]:
    """`ids` up to (not including) the (bars+1)-th Bar token."""
    seen = 0
    for i, token in enumerate(ids):
        if token == tokenizer.vocab.bar_id:
            seen += 1
            if seen == bars + 1:
                return ids[:i]
    return list(ids)


def cut_to_seconds(tokenizer: REMITokenizer, ids: list[int], seconds: float) -> tuple[list[int], bool]:
    """`ids` up to the first Bar/Position at or after `seconds`; also whether that cut is at a Bar."""
    bins = Bins(tokenizer.config)
    clock = TokenClock.for_config(tokenizer.config)
    for i, token, state, allowed in tokenizer.grammar.walk(ids):
        if not allowed:
            continue
        step = event_step(state)
        if step is not None and clock.seconds_at(step) >= seconds:
            return ids[:i], state.phase == Phase.BAR
        follow_tempo(clock, state, int(tokenizer.vocab.values[token]), bins)
    return list(ids), True


def load_prompt(path: str | Path, tokenizer: REMITokenizer, prompt_bars: int | None = None,
                prompt_seconds: float | None = None, time_signature: str | None = "file") -> Prompt:
    """Tokenize and cut a prompt file; every problem is a one-line UserError naming the file."""
    path = Path(path)
    if prompt_bars is not None and prompt_seconds is not None:
        raise UserError("set prompt_bars or prompt_seconds, not both")
    if prompt_bars is not None and (int(prompt_bars) != prompt_bars or prompt_bars < 1):
        raise UserError(f"prompt_bars must be an integer >= 1, got {prompt_bars}")
    if prompt_seconds is not None and not prompt_seconds > 0:
        raise UserError(f"prompt_seconds must be > 0, got {prompt_seconds}")
    metre = resolve_time_signature(time_signature, path)
    try:
        ids = tokenizer.encode(path, metre)
    except MidiReadError as exc:
        raise UserError(f"prompt {exc}") from None
    if ids and ids[-1] == tokenizer.vocab.eos_id:
        ids = ids[:-1]
    if _count(tokenizer, ids, TokenType.DURATION) == 0:
        raise UserError(f"prompt {path}: has no notes")
    ends_at_bar_line = True
    if prompt_bars is not None:
        ids = cut_to_bars(tokenizer, ids, int(prompt_bars))
        if _count(tokenizer, ids, TokenType.DURATION) == 0:
            raise UserError(f"prompt {path}: no notes in its first {int(prompt_bars)} bar(s) "
                            "(raise prompt_bars or use prompt_seconds)")
    elif prompt_seconds is not None:
        ids, ends_at_bar_line = cut_to_seconds(tokenizer, ids, float(prompt_seconds))
        if _count(tokenizer, ids, TokenType.DURATION) == 0:
            raise UserError(f"prompt {path}: no notes start in its first {prompt_seconds:g} seconds "
                            "(raise prompt_seconds)")
    return Prompt(ids, path, _count(tokenizer, ids, TokenType.BAR), _count(tokenizer, ids, TokenType.DURATION),
                  ends_at_bar_line, metre)
