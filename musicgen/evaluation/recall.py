"""Teacher-forced recall: does the model predict a restated bar's notes better than new material?

A model that has learnt form should find the notes of a bar that restates an earlier bar (a verse coming back, a
chorus) easier to predict than the notes of a bar that does not: they are in its context. So on real songs
(their first ``max_tokens`` tokens, one parallel forward pass in eval mode) the negative log-likelihood of the
**Pitch** tokens (the token that says *which* note: Velocity and Duration say little about form, Position is
shared by every bar with the same rhythm) is split by the bar of the note's onset:

* ``restating``: bars that repeat an earlier bar by the form definition of :mod:`.form` (symmetric bar
  similarity >= 0.6 to one bar 4..64 four-beat bars back, not a copy of the bar right before);
* ``other``: every other bar (new material, loop copies, the first four bars).

``ratio = nll_restating / nll_other``: 1 means the model gains nothing from having heard the bar before; a model
that copies well goes far below 1. The restating bars are also split by how far back their *nearest* source is
(the smallest lag 1..64 at which they match at 0.6, here lags 1-3 included): ``1-4`` bars back vs ``5-32`` (a
linear-attention model with decaying memory may recall the last bars and lose the ones a chorus ago).

Bars are the four-beat bars of :mod:`.form`, built from the token stream itself: the grammar walk gives each
Pitch token its onset (the grid step of its Position), which makes its cell and four-beat bar; drum notes are
left out of the bars and of the scores. Only bars wholly inside the scored tokens count (the bar the window
cuts through is dropped, unless the song ends inside the window).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..tokenizer import DRUM_PROGRAM, REMITokenizer, TokenType
from .form import CELLS, MAX_LAG, REPEAT_THRESHOLD, analyse_bars, bar_similarity, bars_from_notes, lag_matrix

__all__ = ["pitch_token_bars", "song_ids", "teacher_forced_recall", "SOURCE_LAG_BUCKETS"]

SOURCE_LAG_BUCKETS = ((1, 4), (5, 32))


def song_ids(path: str | Path, tokenizer: REMITokenizer, time_signature: Any = "index", align: bool = False
             ) -> list[int]:
    """Token ids of a song as training saw them: ``"index"`` reads the metre of a POP909 file (named by its
    id) from the ``index.tsv`` beside it, as the shipped model's data config does (the file's own events when
    there is no such row); ``"file"`` the file's events; or a (numerator, denominator) pair. ``align``: its
    beats put on the grid first (`data.align_beats`)."""
    from ..data.prepare import encode_source

    path = Path(path)
    metre = None
    if time_signature == "index":
        if path.stem.isdigit() and (path.parent / "index.tsv").is_file():
            from ..data.sources import read_pop909_metres

            metre = read_pop909_metres(path.parent).get(int(path.stem))
    elif time_signature != "file":
        metre = tuple(time_signature)
    return encode_source(tokenizer, path, metre, align)


def pitch_token_bars(ids: Sequence[int], tokenizer: REMITokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """The non-drum Pitch tokens of ``ids``: (their indices in ``ids``, their onsets in 16ths from the start,
    their MIDI pitches, whether the stream reached EOS). Four-beat bar = onset // 16, cell = onset % 16."""
    vocab = tokenizer.vocab
    span = vocab.ranges[TokenType.PITCH]
    quarter = tokenizer.config.steps_per_quarter
    indices, steps, pitches, ended = [], [], [], False
    for index, token, state, allowed in tokenizer.grammar.walk(ids):
        if not allowed:
            continue
        if token == vocab.eos_id:
            ended = True
        if span.start <= token < span.stop and state.program != DRUM_PROGRAM:
            indices.append(index)
            steps.append(state.step * 4 // quarter)  # grid steps -> 16ths
            pitches.append(int(vocab.values[token]))
    return (np.asarray(indices, dtype=np.int64), np.asarray(steps, dtype=np.int64),
            np.asarray(pitches, dtype=np.int64), ended)


def _groups(steps: np.ndarray, pitches: np.ndarray, n_bars: int) -> dict[str, np.ndarray]:
    """Per bar: restating (form definition) and the bucket of the nearest source lag (1..64)."""
    bars = bars_from_notes(steps, pitches, n_bars)
    form = analyse_bars(bars)
    _, sim = bar_similarity(bars)
    matches = np.nan_to_num(lag_matrix(sim, range(1, MAX_LAG + 1)), nan=0.0) >= REPEAT_THRESHOLD
    nearest = np.where(matches.any(1), np.argmax(matches, axis=1) + 1, 0)
    groups = {"restating": form["repeats"], "other": ~form["repeats"]}
    for lo, hi in SOURCE_LAG_BUCKETS:
        groups[f"restating_source_{lo}-{hi}"] = form["repeats"] & (nearest >= lo) & (nearest <= hi)
    return groups


@torch.no_grad()
def teacher_forced_recall(model: torch.nn.Module, tokenizer: REMITokenizer, paths: Sequence[str | Path],
                          max_tokens: int = 4096, time_signature: Any = "index", seed: int = 1234,
                          align: bool = False) -> dict[str, Any]:
    """Pitch-token NLL (nats) in restating vs other bars over ``paths`` (module docstring), pooled over songs.

    One forward pass per song over its first ``max_tokens + 1`` tokens (``max_tokens`` predictions), the model in
    eval mode; SPE noise / random features drawn from a generator seeded with ``seed`` (as ``position_nll``).
    ``align``: the songs' beats put on the grid, as a model trained with ``data.align_beats`` saw its songs.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    gates: dict[str, float] = {}  # the recall head's copy gate before each Pitch token, summed
    per_song = []
    try:
        for path in paths:
            ids = song_ids(path, tokenizer, time_signature, align)[:max_tokens + 1]
            index, steps, pitches, ended = pitch_token_bars(ids, tokenizer)
            index_ok = index >= 1  # the first token has no prediction
            index, steps, pitches = index[index_ok], steps[index_ok], pitches[index_ok]
            if not len(index):
                continue
            bar = steps // CELLS
            n_bars = int(bar.max()) + 1 if ended else int(bar.max())  # drop the bar the window cuts through
            if n_bars < 1:
                continue
            tokens = torch.tensor(ids, dtype=torch.long, device=device)[None]
            generator = torch.Generator(device=device).manual_seed(seed)
            logits = model(tokens[:, :-1], generator=generator)[0]
            nll = F.cross_entropy(logits[index - 1].float(), tokens[0, index], reduction="none").double().cpu().numpy()
            gate = model.recall_gate(tokens[:, :-1], torch.Generator(device=device).manual_seed(seed)) \
                if getattr(model, "recall", None) is not None else None
            gate = gate[0, index - 1].double().cpu().numpy() if gate is not None else None
            groups = _groups(steps, pitches, n_bars)
            inside = bar < n_bars
            song = {"path": str(path), "tokens": len(ids) - 1, "bars": n_bars,
                    "restating_bars": int(groups["restating"].sum()),
                    "bars_with_notes": int(np.unique(bar[inside]).size)}
            for name, flags in groups.items():
                pick = inside & flags[np.minimum(bar, n_bars - 1)]
                sums[name] = sums.get(name, 0.0) + float(nll[pick].sum())
                counts[name] = counts.get(name, 0) + int(pick.sum())
                if gate is not None:
                    gates[name] = gates.get(name, 0.0) + float(gate[pick].sum())
                song[f"nll_{name}"] = round(float(nll[pick].mean()), 4) if pick.any() else float("nan")
                song[f"pitch_tokens_{name}"] = int(pick.sum())
            per_song.append(song)
    finally:
        model.train(was_training)
    mean = {k: sums[k] / counts[k] if counts[k] else float("nan") for k in sums}
    out: dict[str, Any] = {"songs": len(per_song), "max_tokens": max_tokens}
    for name in mean:
        out[f"nll_{name}"] = round(mean[name], 4)
        out[f"pitch_tokens_{name}"] = counts[name]
        if name in gates and counts[name]:
            out[f"copy_gate_{name}"] = round(gates[name] / counts[name], 4)
    other = mean.get("other", float("nan"))
    out["ratio"] = round(mean.get("restating", float("nan")) / other, 4) if other == other and other else float("nan")
    for lo, hi in SOURCE_LAG_BUCKETS:
        out[f"ratio_source_{lo}-{hi}"] = (round(mean[f"restating_source_{lo}-{hi}"] / other, 4)
                                          if counts.get(f"restating_source_{lo}-{hi}") and other else float("nan"))
    out["per_song"] = per_song
    return out
