"""Tests for musicgen.evaluation.metrics / drift on small hand-built MIDI files.

Every expected value below is derived by hand from the documented definitions,
so a failing test means the implementation no longer matches its docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from miditoolkit import Instrument, MidiFile, Note, TimeSignature

from musicgen.evaluation import drift, metrics
from musicgen.evaluation.metrics import (
    STAT_KEYS,
    aggregate,
    bar_edges,
    chord_progression_irregularity,
    empty_bar_rate,
    estimate_chords,
    format_comparison_table,
    grooving_pattern_similarity,
    match_chord,
    music_statistics,
    note_density,
    pitch_class_entropy,
    pitch_range,
    pitch_range_per_bar,
    polyphony,
    skipped_token_share,
)

TPB = 480
BAR = 4 * TPB  # one 4/4 bar in ticks
Q = TPB  # quarter note


def make_midi(notes, drums=(), time_sigs=(), tpb=TPB) -> MidiFile:
    """notes / drums: iterables of (pitch, start, end) in ticks."""
    midi = MidiFile(ticks_per_beat=tpb)
    if notes:
        inst = Instrument(program=0, is_drum=False, name="piano")
        inst.notes = [Note(velocity=80, pitch=p, start=s, end=e) for p, s, e in notes]
        midi.instruments.append(inst)
    if drums:
        kit = Instrument(program=0, is_drum=True, name="drums")
        kit.notes = [Note(velocity=80, pitch=p, start=s, end=e) for p, s, e in drums]
        midi.instruments.append(kit)
    midi.time_signature_changes = [TimeSignature(n, d, t) for n, d, t in time_sigs]
    return midi


def chord(pitches, bar, length=BAR):
    return [(p, bar * BAR, bar * BAR + length) for p in pitches]


def entropy_bits(*counts):
    p = np.asarray(counts, float) / sum(counts)
    return float(-(p * np.log2(p)).sum())


# --------------------------------------------------------------------------- #
# Pitch-class entropy
# --------------------------------------------------------------------------- #
def test_c_major_scale_in_one_bar_has_log2_7_entropy():
    scale = [60, 62, 64, 65, 67, 69, 71]
    midi = make_midi([(p, i * 240, (i + 1) * 240) for i, p in enumerate(scale)])
    assert pitch_class_entropy(midi, 1) == pytest.approx(math.log2(7))
    # Fewer bars than the window: falls back to the whole piece (MusDr behaviour).
    assert pitch_class_entropy(midi, 4) == pytest.approx(math.log2(7))


def test_repeated_pitch_class_has_zero_entropy_and_octaves_fold():
    midi = make_midi([(60 + 12 * (i % 2), i * Q, (i + 1) * Q) for i in range(4)])  # C4 C5 C4 C5
    assert pitch_class_entropy(midi, 1) == 0.0


def test_entropy_uses_counts_not_durations_and_averages_over_windows():
    # Bar 0: C (whole note) + E (16th) -> counts 1:1 -> 1 bit, regardless of duration.
    # Bar 1: C only -> 0 bits.  H1 = mean(1, 0) = 0.5
    notes = [(60, 0, BAR), (64, 0, 120), (60, BAR, BAR + Q)]
    midi = make_midi(notes)
    assert pitch_class_entropy(midi, 1) == pytest.approx(0.5)
    # H4 falls back to a 2-bar window: counts C=2, E=1.
    assert pitch_class_entropy(midi, 4) == pytest.approx(entropy_bits(2, 1))


def test_h4_slides_with_stride_one_and_skips_empty_windows():
    # Bars 0-3: one C each; bar 4: one D.  4-bar windows: [0..3] -> 0 bits, [1..4] -> H(3,1).
    notes = [(60, b * BAR, b * BAR + Q) for b in range(4)] + [(62, 4 * BAR, 4 * BAR + Q)]
    midi = make_midi(notes)
    assert pitch_class_entropy(midi, 4) == pytest.approx(entropy_bits(3, 1) / 2)
    # 1-bar windows: all zero (each bar has a single pitch class).
    assert pitch_class_entropy(midi, 1) == 0.0
    # Empty bar in the middle is skipped for H1, not counted as 0.
    gap = make_midi([(60, 0, Q), (64, 0, Q), (60, 2 * BAR, 2 * BAR + Q), (64, 2 * BAR, 2 * BAR + Q)])
    assert pitch_class_entropy(gap, 1) == pytest.approx(1.0)


def test_drums_are_excluded_from_pitch_metrics():
    notes = [(60, 0, Q), (64, Q, 2 * Q)]
    plain = make_midi(notes)
    with_drums = make_midi(notes, drums=[(36, 0, 60), (42, 240, 300), (38, 480, 540)])
    assert pitch_class_entropy(with_drums, 1) == pitch_class_entropy(plain, 1) == pytest.approx(1.0)
    assert pitch_range(with_drums) == pitch_range(plain) == 4.0
    assert polyphony(with_drums) == polyphony(plain) == 1.0
    # ... but drums are onsets: they count for note density.
    assert note_density(with_drums) == 5.0


# --------------------------------------------------------------------------- #
# Grooving-pattern similarity
# --------------------------------------------------------------------------- #
def test_identical_bars_have_gs_one():
    pattern = [0, Q, 2 * Q + 240, 3 * Q]
    notes = [(60 + b, b * BAR + t, b * BAR + t + 120) for b in range(4) for t in pattern]
    assert grooving_pattern_similarity(make_midi(notes)) == pytest.approx(1.0)


def test_disjoint_onsets_give_known_gs():
    # Bar 0 onsets on beats 1 and 3, bar 1 on beats 2 and 4: XOR count 4.
    notes = [(60, 0, Q), (60, 2 * Q, 3 * Q), (60, BAR + Q, BAR + 2 * Q), (60, BAR + 3 * Q, BAR + 4 * Q)]
    midi = make_midi(notes)
    assert grooving_pattern_similarity(midi, steps_per_beat=16) == pytest.approx(1 - 4 / 64)
    assert grooving_pattern_similarity(midi, steps_per_beat=4) == pytest.approx(1 - 4 / 16)
    # Three bars A, B, A: pairs (A,B), (A,A), (B,A) -> mean(0.75, 1, 0.75) on a 16 grid.
    aba = notes + [(60, 2 * BAR, 2 * BAR + Q), (60, 2 * BAR + 2 * Q, 2 * BAR + 3 * Q)]
    assert grooving_pattern_similarity(make_midi(aba), steps_per_beat=4) == pytest.approx(2.5 / 3)


def test_gs_counts_empty_bars_and_needs_two_bars():
    # Bar 0: one onset, bar 1 empty, bar 2: one onset at the same position.
    midi = make_midi([(60, 0, Q), (60, 2 * BAR, 2 * BAR + Q)])
    # pairs: (0,1): 1-1/16, (0,2): 1, (1,2): 1-1/16
    assert grooving_pattern_similarity(midi, steps_per_beat=4) == pytest.approx((2 * (15 / 16) + 1) / 3)
    assert math.isnan(grooving_pattern_similarity(make_midi([(60, 0, Q)])))


# --------------------------------------------------------------------------- #
# Chords and CPI
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize(
    "pitches, bass, expected",
    [
        ([60, 64, 67], 0, "C:maj"),
        ([57, 60, 64], 9, "A:min"),
        ([60, 64, 67, 71], 0, "C:maj7"),
        ([57, 60, 64, 67], 9, "A:min7"),
        ([55, 59, 62, 65], 7, "G:dom7"),
        ([59, 62, 65], 11, "B:dim"),
        ([60, 65, 67], 0, "C:sus4"),
        ([64, 68, 72], 4, "E:aug"),  # symmetric: the bass breaks the tie
        ([60, 64, 68], 0, "C:aug"),
    ],
)
def test_match_chord_templates(pitches, bass, expected):
    profile = np.zeros(12)
    for p in pitches:
        profile[p % 12] += 1.0
    assert match_chord(profile, bass) == expected


def test_chord_matching_is_duration_weighted():
    # C-E-G held for the whole bar, a passing B for a 16th: still C:maj, not C:maj7.
    notes = chord([60, 64, 67], 0) + [(71, 0, 120)]
    assert estimate_chords(make_midi(notes)) == ["C:maj"]
    # B held as long as the triad: C:maj7.
    notes = chord([60, 64, 67, 71], 0)
    assert estimate_chords(make_midi(notes)) == ["C:maj7"]


def test_known_chord_sequence_gives_expected_cpi():
    prog = [[60, 64, 67], [53, 57, 60], [55, 59, 62]] * 2  # C F G C F G, one per bar
    notes = [n for b, c in enumerate(prog) for n in chord(c, b)]
    midi = make_midi(notes)
    chords = estimate_chords(midi)
    assert chords == ["C:maj", "F:maj", "G:maj"] * 2
    # Trigrams CFG, FGC, GCF, CFG -> 3 distinct / 4.
    assert chord_progression_irregularity(chords) == pytest.approx(0.75)
    assert music_statistics(midi)["CPI"] == pytest.approx(0.75)


def test_cpi_merges_repeats_and_drops_no_chord_segments():
    seq = ["C:maj", "C:maj", None, "F:maj", "G:maj", "G:maj", "C:maj"]  # -> C F G C
    assert chord_progression_irregularity(seq) == pytest.approx(1.0)  # CFG, FGC
    # Unmerged (None still dropped): C C F G G C -> CCF, CFG, FGG, GGC, all distinct.
    assert chord_progression_irregularity(seq, merge_repeats=False) == pytest.approx(1.0)
    # A static harmony: unmerged it is perfectly regular, merged it is a single chord (undefined).
    assert chord_progression_irregularity(["C:maj"] * 4, merge_repeats=False) == pytest.approx(0.5)
    assert math.isnan(chord_progression_irregularity(["C:maj"] * 4))
    assert math.isnan(chord_progression_irregularity(["C:maj", "C:maj", "F:maj"]))  # 2 chords
    assert chord_progression_irregularity(["C:maj", "F:maj"] * 4, n=2) == pytest.approx(2 / 7)


def test_half_bar_chords_and_single_pitch_segments():
    # First half C major, second half G major; then a bar with a lone melody note.
    notes = [(p, 0, 2 * Q) for p in (60, 64, 67)] + [(p, 2 * Q, BAR) for p in (55, 59, 62)]
    notes += [(72, BAR, BAR + Q)]
    midi = make_midi(notes)
    assert estimate_chords(midi, segments_per_bar=2) == ["C:maj", "G:maj", None, None]
    # A note held over the bar line contributes to both bars.
    held = make_midi([(60, 0, 2 * BAR), (64, 0, 2 * BAR), (67, BAR, 2 * BAR)])
    # Bar 0 has only C+E (ties C:maj / A:min / C:aug; bass C decides); bar 1 adds G.
    assert estimate_chords(held) == ["C:maj", "C:maj"]


# --------------------------------------------------------------------------- #
# Density, polyphony, ranges, empty bars, meters
# --------------------------------------------------------------------------- #
def test_polyphony():
    assert polyphony(make_midi(chord([60, 64, 67], 0))) == 3.0
    melody = make_midi([(60 + i, i * Q, (i + 1) * Q) for i in range(4)])  # ends touch next starts
    assert polyphony(melody) == 1.0
    # Arpeggio with held notes: 1, 2, 3 sounding at the three onsets.
    arp = make_midi([(60, 0, BAR), (64, Q, BAR), (67, 2 * Q, BAR)])
    assert polyphony(arp) == pytest.approx(2.0)


def test_empty_middle_bar_rate_is_one_third():
    midi = make_midi([(60, 0, Q), (62, 2 * BAR, 2 * BAR + Q)])
    assert empty_bar_rate(midi) == pytest.approx(1 / 3)
    # A note sustained through bar 1 is not an onset there: bar 1 is still empty.
    held = make_midi([(60, 0, 2 * BAR), (62, 2 * BAR, 2 * BAR + Q)])
    assert empty_bar_rate(held) == pytest.approx(1 / 3)
    assert note_density(midi) == pytest.approx(2 / 3)
    stats = music_statistics(midi)
    assert stats["n_bars"] == 3.0 and stats["n_notes"] == 2.0


def test_pitch_ranges():
    notes = [(60, 0, Q), (72, Q, 2 * Q), (55, BAR, BAR + Q)]
    midi = make_midi(notes)
    assert pitch_range(midi) == 17.0
    assert pitch_range_per_bar(midi) == pytest.approx((12 + 0) / 2)


def test_three_four_time_signature_bars_are_three_beats():
    midi = make_midi(
        [(60, 0, Q), (62, 3 * Q, 4 * Q), (64, 6 * Q + 10, 7 * Q)],
        time_sigs=[(3, 4, 0)],
    )
    np.testing.assert_allclose(bar_edges(midi, 6 * Q + 10), [0, 3 * Q, 6 * Q, 9 * Q])
    stats = music_statistics(midi)
    assert stats["n_bars"] == 3.0  # would be 2 under 4/4
    assert stats["empty_bar_rate"] == 0.0
    # Every bar has one onset on its downbeat (the 3rd is 10 ticks late, same 16th cell):
    assert stats["GS"] == pytest.approx(1.0)
    # Under the default 4/4 the same notes land in bars 0, 0, 1.
    assert music_statistics(make_midi([(60, 0, Q), (62, 3 * Q, 4 * Q), (64, 6 * Q + 10, 7 * Q)]))[
        "n_bars"
    ] == 2.0


def test_time_signature_change_starts_new_bar():
    # 4/4 for one bar, then 3/4 (explicit 4/4 at 0), and a change placed mid-bar.
    midi = make_midi([(60, 0, Q)], time_sigs=[(4, 4, 0), (3, 4, BAR)])
    np.testing.assert_allclose(bar_edges(midi, BAR + 4 * Q), [0, BAR, BAR + 3 * Q, BAR + 6 * Q])
    late = make_midi([(60, 0, Q)], time_sigs=[(6, 8, 2 * Q)])  # 4/4 until tick 960, then 6/8
    np.testing.assert_allclose(bar_edges(late, 2500), [0, 2 * Q, 2 * Q + 3 * Q, 2 * Q + 6 * Q])
    # Edges stop at the first edge beyond end_tick.
    np.testing.assert_allclose(bar_edges(late, 2000), [0, 2 * Q, 2 * Q + 3 * Q])


def test_empty_midi_gives_nan_without_crashing():
    for midi in (MidiFile(), make_midi([])):
        stats = music_statistics(midi)
        assert list(stats) == list(STAT_KEYS)
        assert stats["n_notes"] == 0.0 and stats["n_bars"] == 0.0
        for k in STAT_KEYS:
            if k not in ("n_notes", "n_bars"):
                assert math.isnan(stats[k]), k
        assert estimate_chords(midi) == []


def test_drum_only_midi_has_rhythm_stats_but_nan_pitch_stats():
    midi = make_midi([], drums=[(36, b * BAR, b * BAR + 60) for b in range(3)])
    stats = music_statistics(midi)
    assert stats["GS"] == pytest.approx(1.0)
    assert stats["note_density"] == 1.0 and stats["empty_bar_rate"] == 0.0
    for k in ("H1", "H4", "CPI", "polyphony", "pitch_range", "pitch_range_bar"):
        assert math.isnan(stats[k]), k


def test_zero_length_notes_are_counted():
    midi = make_midi([(60, 0, 0), (64, 0, 0), (67, 0, 0)])
    assert polyphony(midi) == 3.0
    assert music_statistics(midi)["n_notes"] == 3.0


# --------------------------------------------------------------------------- #
# Aggregation, formatting, skipped tokens
# --------------------------------------------------------------------------- #
def test_skipped_token_share():
    assert skipped_token_share(5, 100) == 0.05
    assert skipped_token_share(0, 10) == 0.0
    assert math.isnan(skipped_token_share(0, 0))


def test_aggregate_ignores_nan():
    rows = [{"H1": 1.0, "CPI": float("nan")}, {"H1": 3.0, "CPI": 0.5}, {"H1": float("nan")}]
    agg = aggregate(rows)
    assert agg["H1"] == pytest.approx((2.0, 1.0))
    assert agg["CPI"] == pytest.approx((0.5, 0.0))
    nan_only = aggregate([{"GS": float("nan")}])["GS"]
    assert math.isnan(nan_only[0]) and math.isnan(nan_only[1])
    assert list(aggregate(rows, keys=["CPI"])) == ["CPI"]


def test_format_comparison_table():
    gen = [{"H1": 2.0, "GS": 0.9, "extra": 1.0}, {"H1": 2.5, "GS": float("nan")}]
    ref = aggregate([{"H1": 1.5, "GS": 0.95}])
    text = format_comparison_table(gen, ref, labels=("model", "data"), precision=2)
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "model", "data"]
    assert set(lines[1]) == {"-"}
    assert [ln.split()[0] for ln in lines[2:]] == ["H1", "GS", "extra"]  # STAT_KEYS order first
    assert "2.25 ± 0.25" in lines[2] and "1.50 ± 0.00" in lines[2]
    assert "0.90 ± 0.00" in lines[3]
    assert lines[4].rstrip().endswith("-")  # 'extra' missing on the reference side
    assert "n/a" in format_comparison_table([{"H1": float("nan")}], [{"H1": 1.0}])


# --------------------------------------------------------------------------- #
# Windowed statistics (drift)
# --------------------------------------------------------------------------- #
def fake_decode_factory(calls):
    """Fake tokenizer: id 0 is 'ungrammatical' (skipped); id k > 0 is a quarter note of pitch k."""

    def decode(ids):
        calls.append(list(ids))
        notes = []
        t = 0
        skipped = 0
        for i in ids:
            if i == 0:
                skipped += 1
                continue
            notes.append((i, t, t + Q))
            t += Q
        return make_midi(notes), skipped

    return decode


def test_windowed_statistics_splits_and_reports():
    ids = [60] * 1000 + [0] * 100 + [62, 64] * 450 + [67] * 500  # 2500 tokens
    calls: list[list[int]] = []
    rows = drift.windowed_statistics(ids, fake_decode_factory(calls), window=1000)
    assert [r["window_index"] for r in rows] == [0.0, 1.0, 2.0]
    assert [r["start_token"] for r in rows] == [0.0, 1000.0, 2000.0]
    assert [r["n_tokens"] for r in rows] == [1000.0, 1000.0, 500.0]
    assert calls == [ids[0:1000], ids[1000:2000], ids[2000:2500]]
    assert [r["skipped_share"] for r in rows] == pytest.approx([0.0, 0.1, 0.0])
    # Window 0: 1000 quarter notes of C -> 250 bars, H1 = 0; window 1: D/E alternating -> 1 bit.
    assert rows[0]["n_bars"] == 250.0 and rows[0]["H1"] == 0.0
    assert rows[1]["H1"] == pytest.approx(1.0)
    assert rows[2]["n_notes"] == 500.0
    for r in rows:
        assert set(STAT_KEYS) <= set(r)

    dropped = drift.windowed_statistics(ids, fake_decode_factory([]), window=1000, drop_last=True)
    assert len(dropped) == 2


def test_windowed_statistics_accepts_tensors_and_empty_windows():
    torch = pytest.importorskip("torch")
    calls: list[list[int]] = []
    ids = torch.tensor([0, 0, 0, 60, 64, 67])
    rows = drift.windowed_statistics(ids, fake_decode_factory(calls), window=3)
    assert calls == [[0, 0, 0], [60, 64, 67]]
    assert all(isinstance(t, int) for t in calls[0])
    assert rows[0]["skipped_share"] == 1.0 and math.isnan(rows[0]["H1"])
    assert rows[1]["skipped_share"] == 0.0
    assert drift.windowed_statistics([], fake_decode_factory([]), window=3) == []
    with pytest.raises(ValueError):
        drift.windowed_statistics([1], fake_decode_factory([]), window=0)


def test_package_import_is_light_and_reexports():
    import musicgen.evaluation as ev

    assert ev.music_statistics is metrics.music_statistics
    assert ev.windowed_statistics is drift.windowed_statistics


def test_package_import_does_not_pull_numpy():
    import subprocess
    import sys

    code = "import sys, musicgen.evaluation; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
