"""Beat alignment (musicgen/data/beat_phase.py): off-grid files are put on their beats, on-grid files are left
alone, and a corpus prepared with data.align_beats has a common pulse."""

from __future__ import annotations

import numpy as np
import pytest
import miditoolkit

from musicgen.data import TokenCache, prepare_corpus
from musicgen.data.beat_phase import align_beats, beat_offset, corpus_aligns_beats
from musicgen.data.sources import read_pop909_metres
from musicgen.tokenizer import REMITokenizer, load_midi


def _piece(offset: int, tpb: int = 480, beats: int = 64) -> miditoolkit.MidiFile:
    """Bass on every beat and a melody on off-beat eighths, everything ``offset`` ticks late."""
    midi = miditoolkit.MidiFile(ticks_per_beat=tpb)
    inst = miditoolkit.Instrument(program=0)
    for b in range(beats):
        start = b * tpb + offset
        inst.notes.append(miditoolkit.Note(90, 40, start, start + tpb // 2))
        inst.notes.append(miditoolkit.Note(80, 72 + b % 5, start + tpb // 2, start + tpb))
        if b % 2:  # the melody is busier than the bass: the busiest position is the off-beat
            inst.notes.append(miditoolkit.Note(80, 76, start + tpb // 2 + tpb // 4, start + tpb))
            inst.notes.append(miditoolkit.Note(80, 79, start + tpb // 2 + 10, start + tpb))
    midi.instruments.append(inst)
    midi.tempo_changes.append(miditoolkit.TempoChange(100.0, 0))
    return midi


@pytest.mark.parametrize("offset", [45, 130, 200, 300, 440])
def test_an_offset_file_is_put_on_its_beats(offset):
    midi = _piece(offset)
    assert beat_offset(midi) == offset  # the beat (bass), not the busier off-beat
    shift = align_beats(midi)
    starts = [n.start for n in midi.instruments[0].notes if n.pitch == 40]
    assert all(s % 480 == 0 for s in starts) and abs(shift) < 480
    assert min(n.start for n in midi.instruments[0].notes) >= 0


def test_an_on_grid_file_is_left_alone():
    midi = _piece(0)
    before = [(n.start, n.end) for n in midi.instruments[0].notes]
    assert beat_offset(midi) == 0 and align_beats(midi) == 0
    assert [(n.start, n.end) for n in midi.instruments[0].notes] == before


def test_pop909_songs_get_a_common_pulse(pop909_dir):
    """Quantized as they are, the test songs' onsets spread evenly over the four 16ths of a beat; aligned, the
    beat holds the most and the off-beat 8th more than the 16ths between (the metric hierarchy of pop music)."""
    tok = REMITokenizer()
    metres = read_pop909_metres(pop909_dir)
    raw, aligned = np.zeros(4), np.zeros(4)
    for song in range(20, 420, 20):
        path = pop909_dir / f"{song:03d}.mid"
        for total, align in ((raw, False), (aligned, True)):
            midi = load_midi(path)
            if align:
                align_beats(midi)
            score, _ = tok.quantize(midi, metres[song])
            counts = np.bincount([n.onset % 4 for n in score.notes], minlength=4)
            total += counts / counts.sum()
    raw, aligned = raw / raw.sum(), aligned / aligned.sum()
    assert raw.max() - raw.min() < 0.1  # no common beat
    assert aligned[0] > 0.4 and aligned[2] > aligned[1] and aligned[2] > aligned[3]


def test_align_beats_is_part_of_the_cache_key(pop909_dir, tmp_path):
    data = {"name": "pop909", "root": str(pop909_dir), "time_signature": "index", "split": "pop909",
            "max_files": 3, "num_workers": 1}
    tok_cfg = REMITokenizer().config
    plain = prepare_corpus({**data, "cache_dir": str(tmp_path / "c")}, tok_cfg, progress=False)
    plain_ids = [plain.song_tokens(s).copy() for s in plain.songs]
    shifted = prepare_corpus({**data, "cache_dir": str(tmp_path / "c"), "align_beats": True}, tok_cfg,
                             progress=False)
    shifted_ids = [shifted.song_tokens(s) for s in TokenCache(tmp_path / "c").songs]
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(plain_ids, shifted_ids))
    assert corpus_aligns_beats({"data": {"align_beats": True}}) and not corpus_aligns_beats({"data": {}})
