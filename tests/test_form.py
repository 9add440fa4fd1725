"""Form measures (musicgen/evaluation/form.py) and teacher-forced recall (musicgen/evaluation/recall.py)."""

from __future__ import annotations

import math
from pathlib import Path

import miditoolkit
import numpy as np
import pytest
import torch

from musicgen.evaluation.form import (analyse_bars, bar_sets, continuation_report, fitness_scape, form_report,
                                      random_bars, shuffled_bars)
from musicgen.evaluation.recall import pitch_token_bars, song_ids, teacher_forced_recall

from support import TINY

TPB = 480
SONGS = range(20, 180, 20)  # 8 POP909 test songs (id % 20 == 0)


def make_bar(rng: np.random.Generator, notes: int = 10) -> list[tuple[int, int]]:
    """A random bar: ``notes`` distinct (cell, pitch) pairs."""
    cells = rng.choice(16 * 36, size=notes, replace=False)
    return [(int(c // 36), 48 + int(c % 36)) for c in cells]


def make_midi(bars: list[list[tuple[int, int]]]) -> miditoolkit.MidiFile:
    """Four-beat bars of (cell, pitch) onsets, each note a 16th long, on one piano track (+ a drum note per
    bar, which the measures must ignore)."""
    midi = miditoolkit.MidiFile(ticks_per_beat=TPB)
    piano, drums = miditoolkit.Instrument(program=0), miditoolkit.Instrument(program=0, is_drum=True)
    for b, bar in enumerate(bars):
        for cell, pitch in bar:
            start = b * 4 * TPB + cell * TPB // 4
            piano.notes.append(miditoolkit.Note(velocity=80, pitch=pitch, start=start, end=start + TPB // 4))
        drums.notes.append(miditoolkit.Note(velocity=80, pitch=36, start=b * 4 * TPB, end=b * 4 * TPB + 60))
    midi.instruments = [piano, drums]
    return midi


def aaba(transpose_last: int = 0) -> miditoolkit.MidiFile:
    rng = np.random.default_rng(3)
    a = [make_bar(rng) for _ in range(8)]
    b = [make_bar(rng) for _ in range(8)]
    last = [[(c, p + transpose_last) for c, p in bar] for bar in a]
    return make_midi(a + a + b + last)


def test_aaba_form_gives_its_repeats_passages_lags_and_si() -> None:
    r = form_report(aaba(), 0, 32)
    assert r["bars_with_notes"] == 32
    # the second A repeats at lag 8, the last A at lags 16 and 24 (nearest 16): 16 of 32 bars, all in passages
    assert r["repeating_share"] == pytest.approx(0.5)
    assert r["passage_share"] == pytest.approx(0.5)
    assert r["lag_share"] == pytest.approx({"4-7": 0.0, "8-15": 0.25, "16-31": 0.25, "32-64": 0.0})
    assert r["transposed_share"] == 0.0 and r["loop_share"] == 0.0 and r["longest_loop"] == 0
    # lag 24: the last A against the first, every bar identical
    assert r["best_lag"] == 24 and r["best_lag_similarity"] == pytest.approx(1.0)
    # A (8 bars) stated 3 times in 32 bars: score (24 - 8) / 24, coverage 16 / 32 -> harmonic mean 4/7
    assert r["si_mid"] == pytest.approx(4 / 7, abs=1e-9)
    assert r["si_short"] > 0.3 and r["si_long"] == pytest.approx(0.0)


def test_transposed_restatement_is_its_own_share() -> None:
    r = form_report(aaba(transpose_last=5), 0, 32)
    assert r["repeating_share"] == pytest.approx(0.25)       # only the second A
    assert r["transposed_share"] == pytest.approx(0.25)      # the last A, a fourth up


def test_one_bar_loop_is_a_loop_not_form() -> None:
    bar = make_bar(np.random.default_rng(0))
    r = form_report(make_midi([bar] * 32), 0, 32)
    assert r["loop_share"] == pytest.approx(31 / 32) and r["longest_loop"] == 31
    assert r["repeating_share"] == 0.0 and r["passage_share"] == 0.0 and r["transposed_share"] == 0.0


def test_empty_bars_never_repeat_and_shares_count_bars_with_notes() -> None:
    rng = np.random.default_rng(1)
    a = [make_bar(rng) for _ in range(4)]
    r = form_report(make_midi([[]] * 8 + a + a), 0, 16)     # 8 silent bars, then A A
    assert r["bars_with_notes"] == 8
    assert r["repeating_share"] == pytest.approx(0.5) and r["loop_share"] == 0.0


def test_fitness_scape_of_random_and_repeated_matrices() -> None:
    assert np.nanmax(fitness_scape(np.eye(20))) == 0.0       # nothing restated
    ones = fitness_scape(np.ones((12, 12)))                  # a loop: every segment restated
    assert ones[3, 0] == pytest.approx(2 / 3)  # L=4 at bar 0: 3 paths, score (12 - 4) / 12, coverage 8 / 12


def test_continuation_that_restates_its_prompt() -> None:
    rng = np.random.default_rng(2)
    prompt = [make_bar(rng) for _ in range(8)]
    r = continuation_report(make_midi(prompt + prompt), 8, 16)
    assert r["restates_prompt_share"] == 1.0 and r["repeating_share"] == 1.0 and r["passage_share"] == 1.0
    assert r["density_ratio"] == pytest.approx(1.0) and r["top_voice_shift"] == pytest.approx(0.0)
    assert r["top_gap_continuation"] == pytest.approx(r["top_gap_prompt"])
    assert r["groove_prompt"] == pytest.approx(analyse_bars(bar_sets(make_midi(prompt), 0, 8))["groove"] * 56 / 64
                                               + 8 / 64)  # all 64 pairs: 56 distinct pairs + 8 identical (GS 1)
    higher = continuation_report(make_midi(prompt + [[(c, p + 12) for c, p in bar] for bar in prompt]), 8, 16)
    assert higher["top_voice_shift"] == pytest.approx(12.0) and higher["restates_prompt_share"] == 0.0


@pytest.fixture(scope="module")
def songs(pop909_dir: Path) -> dict[int, np.ndarray]:
    return {i: bar_sets(miditoolkit.MidiFile(str(pop909_dir / f"{i:03d}.mid")), 0, 64) for i in SONGS}


def test_real_songs_have_form_shuffled_and_random_do_not(songs: dict[int, np.ndarray]) -> None:
    rows = {"songs": [], "shuffled": [], "random": []}
    for i, bars in songs.items():
        rows["songs"].append(analyse_bars(bars))
        rows["shuffled"].append(analyse_bars(shuffled_bars(bars, seed=i)))
        rows["random"].append(analyse_bars(random_bars(bars, seed=i)))
    mean = {name: {k: float(np.mean([r[k] for r in rs])) for k in ("repeating_share", "passage_share",
                                                                      "best_lag_similarity", "si_mid", "loop_share")}
            for name, rs in rows.items()}
    assert mean["songs"]["passage_share"] > 0.2
    assert mean["songs"]["passage_share"] > 3 * mean["shuffled"]["passage_share"]
    assert mean["songs"]["si_mid"] > mean["shuffled"]["si_mid"] + 0.15
    assert mean["songs"]["best_lag_similarity"] > mean["shuffled"]["best_lag_similarity"] + 0.1
    assert mean["songs"]["loop_share"] < 0.02
    assert mean["random"]["repeating_share"] < 0.01 and mean["random"]["passage_share"] == 0.0
    assert mean["random"]["best_lag_similarity"] < 0.08 and mean["random"]["si_mid"] == 0.0


def test_pitch_tokens_land_in_the_bars_of_the_decoded_song(pop909_dir: Path) -> None:
    from musicgen.evaluation.form import bars_from_notes
    from musicgen.tokenizer import REMITokenizer

    tokenizer = REMITokenizer()
    ids = song_ids(pop909_dir / "020.mid", tokenizer)
    _, steps, pitches, ended = pitch_token_bars(ids, tokenizer)
    assert ended and len(steps) > 500
    assert np.array_equal(bars_from_notes(steps, pitches, 48), bar_sets(tokenizer.decode(ids), 0, 48))


def test_recall_runs_on_a_tiny_model(pop909_dir: Path) -> None:
    from musicgen.model import build_model
    from musicgen.tokenizer import REMITokenizer

    tokenizer = REMITokenizer()
    torch.manual_seed(0)
    model = build_model(TINY, len(tokenizer.vocab)).train()
    r = teacher_forced_recall(model, tokenizer, [pop909_dir / "020.mid", pop909_dir / "040.mid"], max_tokens=1536)
    assert model.training  # left as it was found
    assert r["songs"] == 2 and r["pitch_tokens_restating"] > 50 and r["pitch_tokens_other"] > 50
    for key in ("nll_restating", "nll_other", "ratio", "nll_restating_source_1-4"):
        assert math.isfinite(r[key]), key
    # an untrained model knows nothing of form: about log(vocab) everywhere, no gain from restating
    assert 0.9 < r["ratio"] < 1.1
    assert sum(s["pitch_tokens_restating"] + s["pitch_tokens_other"] for s in r["per_song"]) == \
        r["pitch_tokens_restating"] + r["pitch_tokens_other"]
