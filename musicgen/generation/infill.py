"""Infilling: regenerate chosen bars of a piece and keep every other bar note for note.

    pieces = generate("checkpoints/musicgen-small.pt", "song.mid", infill="9-12,25-28", num_samples=2, seed=1)

How (training-free; docs/compose.md measures each choice):

* **What the model sees.** The model writes forward only, so the bars *after* a gap are shown to it first, in
  the fill-in-the-middle layout of `musicgen.data.fim`: ``[BOS] [the next bars after the gap] [BOS] [the bars
  before the gap]``, then it writes the gap (a checkpoint trained without fill-in-the-middle crops,
  ``train.fim_rate=0``, reads them without the second BOS, as it was measured before). The recall head can copy
  from both sides (a chorus that comes back after the gap is in its window), and the stack hears where the
  music goes. docs/compose.md measures how much likelier this makes the real missing bars.
* **Exactly the bars asked for.** Each candidate is sampled with the session's grammar-constrained decoder, the
  decoding rules and the controls, and stops at the bar line after the last filled bar; the metre of the gap
  is imposed (no TimeSig token may change it), so the filled bars end exactly where the kept bars resume (a
  range across a metre change is refused; one that starts at a change gets the new metre).
* **Joining what follows.** ``infill_candidates`` candidates are sampled per gap, and the one under which the
  model finds the kept bars after the gap most likely (read in the usual order: before, candidate, after) is
  kept: the "sample and rank" baseline of fill-in-the-middle work.
* **Kept bars untouched.** The output is the input MIDI file itself with, in each gap, the notes whose onset
  the tokenizer places in those bars replaced by the candidate's notes (clipped at the gap's end). Tempo map,
  metre, other tracks, controllers and every kept note stay exactly as they were; nothing is re-quantized.

Memory and time stay bounded for prompts of any length: the model sees at most ``CONTEXT_TOKENS`` tokens of
bars before a gap and ``LOOKAHEAD_BEATS`` beats after it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import miditoolkit
import torch
import torch.nn.functional as F

from ..config import UserError
from ..data.fim import LOOKAHEAD_BEATS, fim_context
from ..tokenizer import MidiReadError, REMITokenizer, TokenType, load_midi
from ..tokenizer.score import grid_step
from .bar_ranges import BarRange, check_within, parse_bar_ranges
from .prompt import Prompt, resolve_time_signature
from .session import GenerationSession, StopConfig, sample_seed

#: tokens of bars before a gap the model reads (whole bars, the nearest first): the recall head's window
CONTEXT_TOKENS = 4096
#: name of the track that receives filled notes when no track of their instrument is unique in the file
INFILL_TRACK = "musicgen infill"


def split_bars(tokens: list[int], vocab: Any) -> list[list[int]]:
    """``tokens`` cut at their Bar tokens: each bar from its Bar token on, without TimeSig tokens (a bar's metre
    is kept beside it; :meth:`PieceBars.join` writes them back where the metre changes) or BOS / EOS."""
    timesig = vocab.ranges[TokenType.TIME_SIG]
    bars: list[list[int]] = []
    for token in tokens:
        if token == vocab.bar_id:
            bars.append([token])
        elif bars and token != vocab.eos_id and not timesig.start <= token < timesig.stop:
            bars[-1].append(token)
    return bars


@dataclass
class PieceBars:
    """A piece tokenized as training sees it, split at its bar lines."""

    bars: list[list[int]]  # each bar's tokens, from its Bar token, without TimeSig (:meth:`join` adds them)
    metres: list[tuple[int, int]]
    starts: list[int]  # each bar's first grid step
    lengths: list[int]  # each bar's steps

    @classmethod
    def from_midi(cls, tokenizer: REMITokenizer, midi: miditoolkit.MidiFile, metre: tuple[int, int] | None,
                  ) -> "PieceBars":
        score, _ = tokenizer.quantize(midi, metre)
        return cls(split_bars(tokenizer.encode_score(score), tokenizer.vocab), [(b.numerator, b.denominator) for b in score.bars], [b.start for b in score.bars],
                   [b.length for b in score.bars])

    def join(self, tokenizer: REMITokenizer, indices: list[int], replaced: dict[int, list[int]] | None = None,
             start: tuple[int, int] = (4, 4)) -> list[int]:
        """The tokens of bars ``indices`` (0-based, in the order given) played one after the other, with a TimeSig
        token wherever the metre differs from the bar before (``start``: the metre before the first).
        ``replaced``: bar index -> tokens to use instead (a filled bar)."""
        out, metre = [], start
        for i in indices:
            tokens = (replaced or {}).get(i, self.bars[i])
            out.append(tokens[0])
            if self.metres[i] != metre:
                metre = self.metres[i]
                out.append(tokenizer.vocab.time_signature_id(*metre))
            out.extend(tokens[1:])
        return out


@dataclass
class Gap:
    """One range being filled: its bars (0-based, end exclusive) and what the model reads around it."""

    first: int
    end: int
    before: list[int]  # bar indices read before the gap (the nearest CONTEXT_TOKENS tokens' worth)
    after: list[int]  # bar indices after the gap: shown first, and scored


@dataclass
class FilledGap:
    """What was chosen for one gap: the bars' tokens, and each candidate's log-likelihood of the bars after."""

    range: BarRange
    tokens: list[int]
    scores: list[float]
    chosen: int
    result: Any  # the chosen candidate's SampleResult (its rules' reports)


def load_piece(path: str | Path, tokenizer: REMITokenizer, time_signature: str | None
               ) -> tuple[miditoolkit.MidiFile, PieceBars]:
    """The prompt file as a MIDI object and as bars; one-line errors naming the file."""
    path = Path(path)
    metre = resolve_time_signature(time_signature, path)
    try:
        midi = load_midi(path)
        piece = PieceBars.from_midi(tokenizer, midi, metre)
    except MidiReadError as exc:
        raise UserError(f"prompt {exc}") from None
    if not piece.bars:
        raise UserError(f"prompt {path}: has no notes")
    return midi, piece


def plan_gaps(piece: PieceBars, ranges: tuple[BarRange, ...], path: Path) -> list[Gap]:
    """Check the ranges against the piece and choose each gap's context."""
    check_within(ranges, len(piece.bars), f"the prompt {path.name}")
    gaps = []
    for k, r in enumerate(ranges):
        first, end = r.first - 1, r.last
        if len(set(piece.metres[first:end])) > 1:
            raise UserError(f"infill={r}: the metre changes inside these bars of {path.name}; choose bars in one "
                            "metre (a range may start where a new metre starts)")
        before, tokens = [], 0
        for i in range(first - 1, -1, -1):
            tokens += len(piece.bars[i])
            if before and tokens > CONTEXT_TOKENS:
                break
            before.insert(0, i)
        next_gap = ranges[k + 1].first - 1 if k + 1 < len(ranges) else len(piece.bars)
        after, beats = [], 0.0
        for i in range(end, next_gap):
            if beats >= LOOKAHEAD_BEATS:
                break
            after.append(i)
            num, den = piece.metres[i]
            beats += num * 4 / den
        gaps.append(Gap(first, end, before, after))
    return gaps


def suffix_logprobs(model: Any, head: list[int], candidates: list[list[int]], tail: list[int],
                    device: torch.device) -> list[float]:
    """log p(tail | head + candidate) for each candidate, summed over the tail's tokens: one parallel pass per
    candidate (the recall head's pass costs memory in the square of its length, so candidates are not
    batched), with the same noise draws for every candidate."""
    if not tail:
        return [0.0] * len(candidates)
    out = []
    for candidate in candidates:
        row = torch.tensor([head + candidate + tail], dtype=torch.long, device=device)
        with torch.inference_mode():
            logits = model(row[:, :-1], generator=torch.Generator(device=device).manual_seed(0))[0]
        start = row.shape[1] - len(tail)
        out.append(-float(F.cross_entropy(logits[start - 1:].float(), row[0, start:], reduction="sum")))
    return out


def _bars_of(tokens: list[int], vocab: Any, count: int) -> list[list[int]]:
    """A candidate's tokens as exactly ``count`` bars (:func:`split_bars`); a candidate cut short by max_tokens is
    completed with empty bars, so the kept bars after it never move."""
    bars = split_bars(tokens, vocab)[:count]
    return bars + [[vocab.bar_id] for _ in range(count - len(bars))]


def trained_for_infill(config: dict[str, Any] | None) -> bool:
    """Whether a checkpoint (its stored run config) was trained with fill-in-the-middle crops, and so reads the
    bars after a gap behind a separating BOS (`musicgen.data.fim`)."""
    return float(((config or {}).get("train") or {}).get("fim_rate") or 0.0) > 0.0


def gap_context(tokenizer: REMITokenizer, piece: PieceBars, gap: Gap, replaced: dict[int, list[int]],
                show_after: bool = True, separated: bool = False) -> list[int]:
    """What the model reads before writing ``gap`` (`fim_context`): BOS, the kept bars after it (``show_after``),
    BOS when ``separated``, then the bars before it; the gap's bars follow in the metre of the bars before them."""
    after = piece.join(tokenizer, gap.after, replaced) if show_after else []
    start = piece.metres[gap.after[-1]] if after else (4, 4)
    return fim_context(tokenizer.vocab.bos_id, after, piece.join(tokenizer, gap.before, replaced, start=start),
                       separated)


def gap_tokens(tokenizer: REMITokenizer, piece: PieceBars, gap: Gap, replaced: dict[int, list[int]] | None = None,
               ) -> list[int]:
    """The gap's own bars (the original ones unless ``replaced``), as they follow the bars before them."""
    start = piece.metres[gap.first - 1] if gap.first > 0 else (4, 4)
    return piece.join(tokenizer, list(range(gap.first, gap.end)), replaced, start=start)


def fill_gaps(model: Any, tokenizer: REMITokenizer, piece: PieceBars, gaps: list[Gap], ranges: tuple[BarRange, ...],
              options: Any, seed: int, sample: int, device: torch.device, show_after: bool = True,
              on_gap: Callable[[], None] | None = None, separated: bool = False,
              ) -> tuple[dict[int, list[int]], list[FilledGap]]:
    """Fill every gap of one sample, left to right (a later gap's context holds the earlier gaps' new bars).
    Returns bar index -> new tokens, and what was chosen per gap. ``show_after=False`` reads only the bars
    before a gap (the comparison of docs/compose.md); ``separated``: the fill-in-the-middle layout (`gap_context`)."""
    vocab = tokenizer.vocab
    replaced: dict[int, list[int]] = {}
    chosen: list[FilledGap] = []
    candidates = int(options.infill_candidates)
    for g, (gap, r) in enumerate(zip(gaps, ranges)):
        metre = piece.metres[gap.first]
        context = gap_context(tokenizer, piece, gap, replaced, show_after, separated)
        controls = dataclasses.replace(options.controls, time_signature=f"{metre[0]}/{metre[1]}")
        stop = StopConfig(r.count, None, None, options.max_tokens, False)
        session = GenerationSession(model, tokenizer, options.sampling, stop, sample_seed(seed, sample, g), device,
                                    options.guards, controls)
        results = session.run(Prompt(context, n_bars=len(gap.before) + len(gap.after)), candidates, progress=False)
        bars = [_bars_of(res.ids[res.prompt_length:], vocab, r.count) for res in results]
        flat = [gap_tokens(tokenizer, piece, gap, {**replaced, **{gap.first + i: bar for i, bar in enumerate(b)}})
                for b in bars]
        head = [vocab.bos_id] + piece.join(tokenizer, gap.before, replaced)
        scores = suffix_logprobs(model, head, flat, piece.join(tokenizer, gap.after, replaced, start=metre), device) \
            if candidates > 1 else [0.0]
        best = max(range(len(flat)), key=lambda i: scores[i])
        for offset, bar in enumerate(bars[best]):
            replaced[gap.first + offset] = bar
        chosen.append(FilledGap(r, flat[best], [round(s, 2) for s in scores], best, results[best]))
        if on_gap is not None:
            on_gap()
    return replaced, chosen


def splice(midi: miditoolkit.MidiFile, tokenizer: REMITokenizer, piece: PieceBars, gaps: list[Gap],
           replaced: dict[int, list[int]]) -> tuple[miditoolkit.MidiFile, list[int]]:
    """A copy of ``midi`` whose notes in each gap are the filled bars' notes (see the module docstring);
    returns it and the number of notes written into each gap."""
    out = copy.deepcopy(midi)
    tpb = out.ticks_per_beat or 480
    ticks_per_step = tpb / tokenizer.config.steps_per_quarter
    spans = gap_steps(piece, gaps)

    def in_gap(step: int) -> bool:
        return any(lo <= step < hi for lo, hi in spans)

    for inst in out.instruments:
        inst.notes = [n for n in inst.notes if not in_gap(grid_step(n.start, ticks_per_step))]
    new: dict[int, list[tuple[miditoolkit.Note, int]]] = {}  # track index -> (filled note, its gap)
    for k, (gap, (lo, hi)) in enumerate(zip(gaps, spans)):
        filled = tokenizer.decode([tokenizer.vocab.bos_id] + piece.join(tokenizer, list(range(gap.first, gap.end)),
                                                                         replaced))
        scale = tpb / (filled.ticks_per_beat or 480)
        for src in filled.instruments:
            target = out.instruments.index(_track_for(out, src))
            for n in src.notes:
                start = int(round(lo * ticks_per_step + n.start * scale))
                end = min(int(round(lo * ticks_per_step + n.end * scale)), int(round(hi * ticks_per_step)))
                if end > start:
                    new.setdefault(target, []).append((miditoolkit.Note(n.velocity, n.pitch, start, end), k))
    written = [0] * len(gaps)
    for target, notes in new.items():
        inst = out.instruments[target]
        for note, k in _fit_between(inst.notes, notes):
            inst.notes.append(note)
            written[k] += 1
    for inst in out.instruments:
        inst.notes.sort(key=lambda n: (n.start, n.pitch))
    out.instruments = [inst for inst in out.instruments if inst.notes or inst.name != INFILL_TRACK]
    return out, written


def _fit_between(kept: list[miditoolkit.Note], new: list[tuple[miditoolkit.Note, int]]
                 ) -> list[tuple[miditoolkit.Note, int]]:
    """The filled notes of one track that can sound beside its kept notes. In a MIDI file a note of one pitch
    ends at the next note-on of that pitch in its track, so a filled note that started while a kept note of its
    pitch still sounds (held over the gap's first bar line) would cut that kept note short once written: it is
    left out (the pitch is sounding already); one that runs into a kept note of its pitch ends where it starts,
    and of two filled notes of one pitch the first ends where the second starts."""
    held: dict[int, list[tuple[int, int]]] = {}  # pitch -> the kept notes' (start, end)
    for n in kept:
        held.setdefault(n.pitch, []).append((n.start, n.end))
    out: list[tuple[miditoolkit.Note, int]] = []
    last: dict[int, miditoolkit.Note] = {}  # pitch -> the latest filled note
    for note, k in sorted(new, key=lambda nk: (nk[0].start, nk[0].pitch)):
        spans = held.get(note.pitch, [])
        if any(start <= note.start < end for start, end in spans):
            continue
        note.end = min([note.end] + [start for start, _ in spans if start > note.start])
        before = last.get(note.pitch)
        if before is not None and before.end > note.start:
            before.end = note.start
        out.append((note, k))
        last[note.pitch] = note
    return [(n, k) for n, k in out if n.end > n.start]


def gap_steps(piece: PieceBars, gaps: list[Gap]) -> list[tuple[int, int]]:
    """Each gap's (first grid step, end grid step)."""
    return [(piece.starts[g.first], piece.starts[g.end - 1] + piece.lengths[g.end - 1]) for g in gaps]


def _track_for(midi: miditoolkit.MidiFile, src: miditoolkit.Instrument) -> miditoolkit.Instrument:
    """The file's one track of ``src``'s instrument, else a (new) track named INFILL_TRACK for it."""
    same = [i for i in midi.instruments if i.is_drum == src.is_drum and (src.is_drum or i.program == src.program)]
    if len(same) == 1:
        return same[0]
    for inst in midi.instruments:
        if inst.name == INFILL_TRACK and inst.is_drum == src.is_drum and inst.program == src.program:
            return inst
    track = miditoolkit.Instrument(program=src.program, is_drum=src.is_drum, name=INFILL_TRACK)
    midi.instruments.append(track)
    return track


def infill_ranges(options: Any) -> tuple[BarRange, ...]:
    """The ranges of ``options.infill`` and the options that cannot go with them, checked before any work."""
    ranges = parse_bar_ranges(options.infill)
    if not options.prompt:
        raise UserError("infill needs a prompt=path/to/song.mid (the piece whose bars are regenerated)")
    conflicts = [name for name, unset in (("prompt_bars", options.prompt_bars is None),
                                          ("prompt_seconds", options.prompt_seconds is None),
                                          ("tokens", options.tokens is None), ("seconds", options.seconds is None),
                                          ("bars", options.bars in ("auto", None)),
                                          ("bpm", options.bpm is None),
                                          ("time_signature", options.time_signature is None),
                                          ("include_prompt", options.include_prompt)) if not unset]
    if conflicts:
        raise UserError(f"infill={options.infill}: {', '.join(conflicts)} cannot be set with infill (the whole "
                        "prompt is kept, with its tempo map and metre, and the ranges say how many bars are filled)")
    return ranges


@dataclass
class InfilledPiece:
    """One sample: the spliced MIDI, its tokens, and per gap what was chosen and how many notes it holds."""

    midi: miditoolkit.MidiFile
    ids: list[int]
    gaps: list[FilledGap]
    spans: list[tuple[int, int]]  # each gap's (start tick, end tick) in the prompt file's ticks
    notes: list[int]  # notes written into each gap


def run_infill(model: Any, tokenizer: REMITokenizer, options: Any, seed: int, device: str | torch.device,
               log: Callable[[str], None], separated: bool = False) -> list[InfilledPiece]:
    """``options.num_samples`` independent fillings of ``options.infill`` in ``options.prompt``; ``separated``:
    the model was trained for it (`trained_for_infill`)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    ranges = infill_ranges(options)
    path = Path(options.prompt)
    midi, piece = load_piece(path, tokenizer, options.prompt_time_signature)
    gaps = plan_gaps(piece, ranges, path)
    vocab = tokenizer.vocab
    ticks_per_step = (midi.ticks_per_beat or 480) / tokenizer.config.steps_per_quarter
    spans = [(int(round(lo * ticks_per_step)), int(round(hi * ticks_per_step))) for lo, hi in gap_steps(piece, gaps)]
    log(f"infill {','.join(map(str, ranges))} of {path.name} ({len(piece.bars)} bars): "
        f"{options.infill_candidates} candidate(s) per range, the one that leads best into the kept bars is kept")
    bar = tqdm(total=options.num_samples * len(gaps), unit="range", desc="infilling", disable=not options.progress,
               dynamic_ncols=True, leave=False)
    out = []
    try:
        for sample in range(options.num_samples):
            replaced, chosen = fill_gaps(model, tokenizer, piece, gaps, ranges, options, seed, sample, device,
                                         on_gap=lambda: bar.update(1), separated=separated)
            spliced, notes = splice(midi, tokenizer, piece, gaps, replaced)
            ids = [vocab.bos_id] + piece.join(tokenizer, list(range(len(piece.bars))), replaced) + [vocab.eos_id]
            out.append(InfilledPiece(spliced, ids, chosen, spans, notes))
    finally:
        bar.close()
    return out
