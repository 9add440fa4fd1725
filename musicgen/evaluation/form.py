"""Does a piece have form? Repeats, repeated passages, loops, a structureness indicator, groove.

Real songs restate: a verse comes back 16 bars later, a chorus twice, a riff every four bars. A model can sound
fine bar by bar and still never come back to anything (no form), or come back to the bar it just played
forever (a loop, which is not form either). These measures tell the three apart (GitHub issue "Music with
form"). Pure numpy on ``miditoolkit.MidiFile`` objects; :func:`form_report` and :func:`continuation_report`
are the entry points, :func:`analyse_bars` works on bars already laid out (the teacher-forced recall measure
of :mod:`.recall` builds them from tokens).

**Bars.** Four-beat bars (``4 * ticks_per_beat``) whatever the metre tokens say, so songs, shuffled songs and
every model are cut the same way (POP909's index gives 2/4 for 44 of its 45 test songs; four-beat bars hold
whole phrases of them). Onsets are rounded to the nearest 16th (16 cells per bar); drum notes are left out. A
bar is the *set* of (cell, pitch) pairs of the notes starting in it (a pitch doubled at one onset counts once).

**Similarity.** ``sim(a, b) = |a & b| / max(|a|, |b|)``, one symmetric similarity for everything. For the
tested bar ``a`` it says the issue's "at least 60% of its (cell, pitch) pairs reappear in one earlier bar" *and*
that those pairs make at least 60% of the earlier bar: a restatement is the same bar, not a subset or a
superset of it. The one-sided ``|a & b| / |a|`` lets a thin bar (two notes of a held chord) "repeat" any dense
bar holding them, and a dense cluster serve as the source of everything; on POP909's 45 test songs it also
gives shuffled songs *more* repeating bars (47%) than the songs (44%). The symmetric form is also what a
self-similarity matrix needs (the structureness indicator) and what a *copy* means (the loop detector).
Measured both ways on those songs (first 64 bars): repeating bars 41% / 44% (symmetric / one-sided), in
repeated passages 36% / 39%, shuffled songs' passages 5.8% / 9.0%. An empty bar is similar to nothing and
never repeats.

**Repeats.** Bar ``b`` repeats when ``sim(b, b - lag) >= 0.6`` for some ``lag`` in 4..64 (inside the analysed
window). This counts re-use of material, whatever the order: a shuffled song keeps it (its bars still find
their twins a few bars away), so it tells music from noise but not form from its absence; the repeated
passages and the structureness indicator do that. Lags below 4 are left out: restating the bar just played is
texture (an accompaniment pattern, a held chord), not form. A bar that *copies* the bar right before it
(similarity >= 0.9, stricter than a repeat: the same notes up to one in ten) is a **loop bar** and does not
count as a repeat even where a lag >= 4 matches: in a one-bar loop every bar matches every earlier bar, and
that is a loop, not form. POP909's test songs copy the previous bar in 0.1% of their first 64 bars (the issue
says under 2%), so excluding loop bars costs real form almost nothing. Each repeating bar is counted in the
bucket of its *nearest* source (the smallest matching lag: what a model must at least reach back for): lags
4-7, 8-15, 16-31, 32-64. A bar "repeats transposed" when it does not repeat but matches an earlier bar (lag
4..64) under one constant shift of all its pitches by 1..12 semitones up or down (a sequence, a modulated
chorus).

**Repeated passages.** Two or more neighbouring bars repeating at the *same* lag: a restated phrase rather than
a lone bar that happens to match (an isolated bar can match by chance; two neighbours at one lag rarely do).

**Best-lag similarity**: for each lag 4..64 the mean similarity of the bars with notes to the bar ``lag``
before (lags with fewer than 8 such bars left out: a mean of a handful of bars is noise), and the largest of
these means (``best_lag_similarity``, with ``best_lag``): how strongly the piece restates itself at its own
period (a song with 8-bar phrases restates at lag 8 or 16). Shuffling destroys it, random notes have none.
``best_match_similarity`` is each bar's best match over the lags, averaged: re-use of material in any order
(shuffling keeps it, like the repeating share).

**Shares** are over the window's bars *with notes* (an intro of silence or a song shorter than the window
does not dilute them); the first four bars count in the denominator though they cannot repeat.

**Structureness indicator** (SI, after MusDr, Wu & Yang 2020, on Müller's fitness scape plot, Müller, Grosche
& Jiang 2012). The bar self-similarity matrix S (symmetric similarity, diagonal 1) is thresholded: entries
below 0.3 become a penalty of -2 (as in Müller's thresholding), those at or above keep their value (not
rescaled). 0.3 keeps bars that share their melody but not their accompaniment: 13.6% of the pairs of bars of
POP909's test songs (0.5 keeps 5.2% and gives those songs SI 0.26 / 0.24 / 0.21 instead of 0.34 / 0.28 / 0.23;
the issue measured 0.31 / 0.28 / 0.23; shuffled songs get 0.10 / 0.01 / 0.00 at 0.3). For every segment
``[s, s + L)`` the optimal *path family* is found: the self path plus the set of non-overlapping diagonal paths
(bars need no time warping, so paths are diagonal: a segment restated bar by bar) that maximises the summed S
along them. Its fitness is the harmonic mean of the normalised score
``(score - L) / (K * L)`` (mean similarity along the K paths, the self path's L taken off) and the
normalised coverage ``(K * L - L) / N`` (share of the N bars the restatements cover). SI over a range of
segment lengths is the largest fitness of a segment whose length is in it: 3-7, 8-14 and 15+ bars (MusDr's
3-8, 8-15, 15+ seconds, here in bars). A segment stated three times, exactly, in a piece of ``N = 4 L`` bars
has fitness ``2 * (2/3) * (1/2) / (2/3 + 1/2) = 0.571``. Loops score high here (every segment is restated);
that is why the loop detectors stand beside it.

**Groove**: grooving-pattern similarity (GS) on 16 cells per bar: ``1 - |onset cells XOR| / 16`` for a pair of
bars, averaged over all pairs of bars with notes (within a piece), or over (prompt bar, continuation bar)
pairs (a continuation keeping the prompt's rhythm).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .bar_windows import _groove
from .continuation import note_arrays

__all__ = ["CELLS", "MIN_LAG", "MAX_LAG", "REPEAT_THRESHOLD", "COPY_THRESHOLD", "LAG_BUCKETS", "SI_RANGES",
           "FORM_KEYS", "bar_sets", "bars_from_notes", "bar_similarity", "lag_matrix", "analyse_bars",
           "fitness_scape", "structureness", "form_report", "continuation_report", "shuffled_bars", "random_bars"]

CELLS = 16            #: onset cells per four-beat bar (a 16th grid)
PITCHES = 128
MIN_LAG, MAX_LAG = 4, 64
REPEAT_THRESHOLD = 0.6  #: share of a bar's (cell, pitch) pairs found in one earlier bar for a repeat
COPY_THRESHOLD = 0.9    #: symmetric similarity to the previous bar for a loop bar (a copy)
SSM_THRESHOLD = 0.3     #: self-similarity below this is a penalty in the fitness scape plot
SSM_PENALTY = -2.0
MAX_SHIFT = 12          #: transposed repeats: constant shifts of 1..12 semitones, up or down
LAG_BUCKETS = ((4, 7), (8, 15), (16, 31), (32, 64))
SI_RANGES = {"si_short": (3, 7), "si_mid": (8, 14), "si_long": (15, None)}
FORM_KEYS = ("repeating_share", "passage_share", "transposed_share", "loop_share", "longest_loop",
             "best_lag_similarity", "best_match_similarity", "si_short", "si_mid", "si_long", "groove")
MIN_BARS_AT_LAG = 8     #: best-lag similarity: lags with fewer bars with notes to compare are left out


# --------------------------------------------------------------------------- bars
def bars_from_notes(steps: np.ndarray, pitches: np.ndarray, n_bars: int) -> np.ndarray:
    """(n_bars, 16, 128) boolean bars from absolute 16th steps (bar = step // 16) and pitches; notes outside
    bars 0..n_bars-1 are dropped."""
    bars = np.zeros((n_bars, CELLS, PITCHES), dtype=bool)
    steps, pitches = np.asarray(steps, dtype=np.int64), np.asarray(pitches, dtype=np.int64)
    keep = (steps >= 0) & (steps < n_bars * CELLS) & (pitches >= 0) & (pitches < PITCHES)
    bars[steps[keep] // CELLS, steps[keep] % CELLS, pitches[keep]] = True
    return bars


def bar_sets(midi: Any, start_bar: int = 0, n_bars: int = 64) -> np.ndarray:
    """Four-beat bars ``start_bar .. start_bar + n_bars - 1`` of ``midi`` as a (n_bars, 16, 128) boolean array
    of note onsets (cell = onset rounded to the nearest 16th, non-drum notes)."""
    starts, pitches, tpb = note_arrays(midi, 0, np.iinfo(np.int64).max)
    steps = (starts * 8 + tpb) // (2 * tpb)  # nearest 16th: round(start * 4 / tpb), halves up
    return bars_from_notes(steps - start_bar * CELLS, pitches, n_bars)


def shuffled_bars(bars: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same bars in a random order: every bar is real music, the order (the form) is gone."""
    return bars[np.random.default_rng(seed).permutation(len(bars))]


def random_bars(bars: np.ndarray, seed: int = 0) -> np.ndarray:
    """As many notes per bar as ``bars``, at uniformly random cells and pitches within its pitch range."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(bars)
    used = np.nonzero(bars.any(axis=(0, 1)))[0]
    lo, hi = (int(used.min()), int(used.max())) if len(used) else (48, 84)
    for b, count in enumerate(bars.reshape(len(bars), -1).sum(1)):
        cells = rng.choice(CELLS * (hi - lo + 1), size=int(count), replace=False)
        out[b, cells // (hi - lo + 1), lo + cells % (hi - lo + 1)] = True
    return out


# --------------------------------------------------------------------------- similarities
def _intersections(bars: np.ndarray, shift: int = 0) -> np.ndarray:
    """inter[b, c] = |bar b & (bar c shifted up by ``shift`` semitones)|."""
    flat = bars.astype(np.float32)
    other = np.zeros_like(flat)
    if shift >= 0:
        other[:, :, shift:] = flat[:, :, :PITCHES - shift]
    else:
        other[:, :, :shift] = flat[:, :, -shift:]
    n = len(bars)
    return flat.reshape(n, -1) @ other.reshape(n, -1).T


def lag_matrix(values: np.ndarray, lags: range) -> np.ndarray:
    """m[b, i] = values[b, b - lags[i]] (NaN where b - lag < 0)."""
    n = len(values)
    out = np.full((n, len(lags)), np.nan)
    for i, lag in enumerate(lags):
        if lag < n:
            out[lag:, i] = values[np.arange(lag, n), np.arange(0, n - lag)]
    return out


def bar_similarity(bars: np.ndarray, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(notes per bar, sim[b, c] = |b & (c + shift)| / max(|b|, |c|), 0 where both are empty)."""
    size = bars.reshape(len(bars), -1).sum(1).astype(np.float64)
    inter = _intersections(bars, shift).astype(np.float64)
    big = np.maximum(size[:, None], size[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        return size, np.where(big > 0, inter / np.maximum(big, 1.0), 0.0)


# --------------------------------------------------------------------------- structureness
def fitness_scape(ssm: np.ndarray, threshold: float = SSM_THRESHOLD, penalty: float = SSM_PENALTY) -> np.ndarray:
    """Fitness ``F[L - 1, s]`` of every segment ``[s, s + L)`` of a self-similarity matrix (NaN where the
    segment does not fit), by the diagonal path families of the module docstring."""
    n = len(ssm)
    fit = np.full((n, n), np.nan)
    if n == 0:
        return fit
    s_thr = np.where(ssm >= threshold, ssm, penalty).astype(np.float64)
    np.fill_diagonal(s_thr, 1.0)
    diag = np.zeros((n + 1, n + 1))  # diag[i, j] = sum of s_thr[i - k, j - k] for k = 1..min(i, j)
    for i in range(n):
        diag[i + 1, 1:] = diag[i, :-1] + s_thr[i]
    for length in range(1, n + 1):
        count = n - length + 1
        # score[s, j]: the diagonal path of segment [s, s + L) against bars [j, j + L)
        score = diag[length:length + count, length:length + count] - diag[:count, :count]
        starts = np.arange(count)
        overlaps = np.abs(starts[None, :] - starts[:, None]) < length  # overlaps the self path (or is it)
        score = np.where(overlaps | (score <= 0), -np.inf, score)
        best = np.zeros((count, n + 1))       # best[s, e]: best summed score of paths ending by bar e
        paths = np.zeros((count, n + 1), dtype=np.int64)
        for end in range(length, n + 1):
            take = best[:, end - length] + score[:, end - length]
            better = take > best[:, end - 1]
            best[:, end] = np.where(better, take, best[:, end - 1])
            paths[:, end] = np.where(better, paths[:, end - length] + 1, paths[:, end - 1])
        k = paths[:, n] + 1  # with the self path
        norm_score = best[:, n] / (k * length)
        norm_cover = (k - 1) * length / n
        with np.errstate(invalid="ignore", divide="ignore"):
            fit[length - 1, :count] = np.where(k > 1, 2 * norm_score * norm_cover / (norm_score + norm_cover), 0.0)
    return fit


def structureness(ssm: np.ndarray) -> dict[str, float]:
    """SI over the segment lengths of :data:`SI_RANGES` (NaN where no segment of such a length fits)."""
    fit = fitness_scape(ssm)
    n = len(ssm)
    out = {}
    for key, (lo, hi) in SI_RANGES.items():
        hi = n if hi is None else min(hi, n)
        out[key] = float(np.nanmax(fit[lo - 1:hi])) if lo <= hi else float("nan")
    return out


# --------------------------------------------------------------------------- form
def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def analyse_bars(bars: np.ndarray) -> dict[str, Any]:
    """Form measures of laid-out bars ((n, 16, 128) booleans); see the module docstring. Besides the shares it
    returns per-bar arrays (``repeats``: repeats at some lag 4..64, not a loop bar; ``in_passage``;
    ``nearest_lag``: smallest matching lag, 0 where none; ``loop``; ``has_notes``) for callers such as the recall
    measure; :func:`form_report` drops them."""
    n = len(bars)
    size, sim = bar_similarity(bars)
    has_notes = size > 0
    lags = range(MIN_LAG, MAX_LAG + 1)
    lag_sim = lag_matrix(sim, lags)                        # (n, 61), NaN where out of the window
    loop = np.zeros(n, dtype=bool)
    loop[1:] = (np.diagonal(sim, offset=-1) >= COPY_THRESHOLD) & has_notes[1:]
    matches = np.nan_to_num(lag_sim, nan=0.0) >= REPEAT_THRESHOLD
    matches &= (has_notes & ~loop)[:, None]
    repeats = matches.any(1)
    nearest = np.where(repeats, np.argmax(matches, axis=1) + MIN_LAG, 0)
    # repeated passages: a bar and a neighbour both repeating at one lag
    same_lag_next = np.zeros_like(matches)
    same_lag_next[:-1] = matches[:-1] & matches[1:]
    in_passage = (same_lag_next | np.roll(same_lag_next, 1, axis=0)).any(1)
    # transposed repeats (only where there is no plain repeat)
    transposed = np.zeros(n, dtype=bool)
    candidates = has_notes & ~loop & ~repeats
    if candidates.any():
        for shift in [s for k in range(1, MAX_SHIFT + 1) for s in (k, -k)]:
            shifted = lag_matrix(bar_similarity(bars, shift)[1], lags)
            transposed |= candidates & (np.nan_to_num(shifted, nan=0.0) >= REPEAT_THRESHOLD).any(1)
    notes = int(has_notes.sum())
    share = (lambda flags: float(flags[has_notes].sum() / notes)) if notes else (lambda flags: float("nan"))
    scored = has_notes & ~np.isnan(lag_sim).all(1)        # bars with notes and at least one lag in the window
    per_bar = np.nanmax(lag_sim[scored], axis=1) if scored.any() else np.zeros(0)
    at_lag = np.where(has_notes[:, None], lag_sim, np.nan)
    counts = (~np.isnan(at_lag)).sum(0)
    means = np.where(counts >= MIN_BARS_AT_LAG, np.nansum(at_lag, 0) / np.maximum(counts, 1), -1.0)
    best_lag = int(np.argmax(means)) + MIN_LAG if (means >= 0).any() else 0
    ssm = sim.copy()
    np.fill_diagonal(ssm, 1.0)
    cell_bar, cell = np.nonzero(bars.any(axis=2)[has_notes])
    return {
        "bars": n, "bars_with_notes": notes,
        "repeating_share": share(repeats),
        "passage_share": share(in_passage),
        "transposed_share": share(transposed),
        "lag_share": {f"{lo}-{hi}": share(repeats & (nearest >= lo) & (nearest <= hi)) for lo, hi in LAG_BUCKETS},
        "loop_share": share(loop),
        "longest_loop": _longest_run(loop),
        "best_lag_similarity": float(means.max()) if best_lag else float("nan"), "best_lag": best_lag,
        "best_match_similarity": float(per_bar.mean()) if len(per_bar) else float("nan"),
        **(structureness(ssm) if n else dict.fromkeys(SI_RANGES, float("nan"))),
        "groove": _groove(cell_bar, cell, notes, CELLS) if notes > 1 else float("nan"),
        "repeats": repeats, "in_passage": in_passage, "nearest_lag": nearest, "loop": loop, "has_notes": has_notes,
    }


def _public(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}


def form_report(midi: Any, start_bar: int = 0, n_bars: int = 64) -> dict[str, Any]:
    """Form measures (module docstring) of the four-beat bars ``start_bar .. start_bar + n_bars - 1``: shares of
    repeating bars, of bars in repeated passages, of transposed repeats, by lag bucket; loop share and longest
    loop; mean best-lag similarity; SI short / mid / long; groove (GS over pairs of bars with notes)."""
    return _public(analyse_bars(bar_sets(midi, start_bar, n_bars)))


# --------------------------------------------------------------------------- continuation
def _top_voice(bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per onset (bar, cell) with notes: the highest pitch, and the gap between it and the mean of the other
    notes at that onset (NaN where the top note is alone)."""
    b, c = np.nonzero(bars.any(axis=2))
    tops, gaps = [], []
    for bar, cell in zip(b, c):
        pitches = np.nonzero(bars[bar, cell])[0]
        tops.append(pitches[-1])
        gaps.append(pitches[-1] - pitches[:-1].mean() if len(pitches) > 1 else np.nan)
    return np.asarray(tops, dtype=np.float64), np.asarray(gaps, dtype=np.float64)


def cross_groove(a: np.ndarray, b: np.ndarray) -> float:
    """Mean GS (16 cells) over pairs (bar of a, bar of b), bars with notes only."""
    ga, gb = a.any(axis=2), b.any(axis=2)
    ga, gb = ga[ga.any(1)].astype(np.float64), gb[gb.any(1)].astype(np.float64)
    if not len(ga) or not len(gb):
        return float("nan")
    xor = ga.sum(1)[:, None] + gb.sum(1)[None, :] - 2 * ga @ gb.T
    return float(np.mean(1.0 - xor / CELLS))


def _nanmean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def continuation_report(midi: Any, prompt_bars: int, end_bar: int) -> dict[str, Any]:
    """Does the continuation (four-beat bars ``prompt_bars .. end_bar - 1``) keep the prompt's (bars
    ``0 .. prompt_bars - 1``) density, groove and melody, and does it come back to the prompt's material?

    * ``density_ratio``: continuation notes per bar / the prompt's (distinct (cell, pitch) pairs);
    * ``groove_prompt``: mean GS between prompt bars and continuation bars (16 cells); ``groove_within`` the
      same within the prompt, its yardstick;
    * ``top_voice_shift``: mean top-voice pitch (highest note at each onset) of the continuation minus the
      prompt's, semitones: a melody that drifts up or sinks into the accompaniment;
    * ``top_gap_prompt`` / ``top_gap_continuation``: mean gap (semitones) between the top note and the mean of
      the other notes at the same onset: a melody riding above its accompaniment keeps a clear gap;
    * ``restates_prompt_share``: share of continuation bars with notes that repeat a prompt bar (lag 4..64, not
      loop bars); ``repeating_share`` / ``passage_share``: the continuation's bars repeating any earlier bar
      (prompt included) and in repeated passages.
    """
    bars = bar_sets(midi, 0, end_bar)
    prompt, cont = bars[:prompt_bars], bars[prompt_bars:]
    p_notes, c_notes = prompt.sum(), cont.sum()
    p_top, p_gap = _top_voice(prompt)
    c_top, c_gap = _top_voice(cont)
    form = analyse_bars(bars)
    _, sim = bar_similarity(bars)
    idx = np.arange(prompt_bars, end_bar)
    from_prompt = np.zeros(end_bar, dtype=bool)
    for b in idx:
        src = np.arange(max(0, b - MAX_LAG), min(prompt_bars, b - MIN_LAG + 1))
        from_prompt[b] = bool(len(src)) and bool((sim[b, src] >= REPEAT_THRESHOLD).any())
    from_prompt &= form["has_notes"] & ~form["loop"]
    has = form["has_notes"][prompt_bars:]
    c_share = (lambda f: float(f[prompt_bars:][has].mean())) if has.any() else (lambda f: float("nan"))
    return {
        "prompt_bars": prompt_bars, "continuation_bars": end_bar - prompt_bars,
        "density_ratio": (float((c_notes / len(cont)) / (p_notes / len(prompt))) if p_notes and len(cont)
                          else float("nan")),
        "groove_prompt": cross_groove(prompt, cont),
        "groove_within": _public(analyse_bars(prompt))["groove"],
        "top_voice_shift": float(c_top.mean() - p_top.mean()) if len(c_top) and len(p_top) else float("nan"),
        "top_gap_prompt": _nanmean(p_gap), "top_gap_continuation": _nanmean(c_gap),
        "restates_prompt_share": c_share(from_prompt),
        "repeating_share": c_share(form["repeats"]),
        "passage_share": c_share(form["in_passage"]),
    }


# --------------------------------------------------------------------------- a planned form's sections
def own_bars(midi: Any, n_bars: int) -> np.ndarray:
    """The piece's first ``n_bars`` bars under its own metre (time-signature events), as (n_bars, cells, 128)
    boolean onsets on a 16th grid from each bar line (cells = the longest bar's 16ths): the bars a plan such as
    ``form="A8 B8 A8"`` counts, so section k's bars line up with section j's whatever the metre."""
    from ..tokenizer import midi_bar_lines

    starts, pitches, tpb = note_arrays(midi, 0, np.iinfo(np.int64).max)
    end = float(starts.max()) if len(starts) else 0.0
    lines = midi_bar_lines(midi, max(end, 1.0))
    while len(lines) <= n_bars:  # silent bars at the end still count
        lines = np.append(lines, lines[-1] + (lines[-1] - lines[-2] if len(lines) > 1 else 4 * tpb))
    lines = lines[:n_bars + 1]
    cells = int(round(float(np.diff(lines).max()) * 4 / tpb))
    out = np.zeros((n_bars, max(cells, 1), PITCHES), dtype=bool)
    bar = np.searchsorted(lines, starts, side="right") - 1
    keep = (bar >= 0) & (bar < n_bars) & (pitches >= 0) & (pitches < PITCHES)
    cell = np.floor((starts[keep] - lines[bar[keep]]) * 4 / tpb + 0.5).astype(np.int64).clip(0, out.shape[1] - 1)
    out[bar[keep], cell, pitches[keep]] = True
    return out


def section_similarity(bars: np.ndarray, sections: list[tuple[str, int, int]]) -> dict[str, float]:
    """How much sections with the same letter resemble each other against sections with different letters:
    the mean similarity (as :func:`bar_similarity`) of bar i of one section with bar i of another, over pairs
    of sections with the same letter (``same``) and with different letters (``different``), bars with notes
    only; ``exact_share``: the share of same-letter bar pairs that are identical (a pasted section scores 1).
    ``sections``: (letter, first bar (0-based), bars)."""
    _, sim = bar_similarity(bars)
    has = bars.reshape(len(bars), -1).any(1)
    same, different = [], []
    for a in range(len(sections)):
        for b in range(a + 1, len(sections)):
            (la, fa, na), (lb, fb, nb) = sections[a], sections[b]
            for i in range(min(na, nb)):
                x, y = fa + i, fb + i
                if x < len(bars) and y < len(bars) and (has[x] or has[y]):
                    (same if la == lb else different).append(sim[x, y])
    def mean(values: list[float]) -> float:
        return float(np.mean(values)) if values else float("nan")

    return {"same": mean(same), "different": mean(different),
            "exact_share": mean([float(s >= 1.0) for s in same]), "same_pairs": len(same),
            "different_pairs": len(different)}
