"""Infilling (musicgen/generation/infill.py): regenerated bars count exactly, every kept bar stays note for note,
the options and controls apply inside the gaps, and every bad range is one line.

Machinery runs on the untrained tiny checkpoint that leans towards notes (conftest.note_checkpoint) with real POP909 songs and with
made-up files (another resolution, a metre change); one test runs the shipped model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import miditoolkit
import pytest

from musicgen.config import UserError
from musicgen.evaluation.infill import kept_identical, kept_notes
from musicgen.generation import GenerateOptions, generate
from musicgen.generation.bar_ranges import BarRange, parse_bar_ranges
from musicgen.generation.infill import load_piece, split_bars
from musicgen.tokenizer import REMITokenizer, TokenType

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "musicgen-small.pt"


def ticks_per_step(midi: miditoolkit.MidiFile) -> float:
    return midi.ticks_per_beat / REMITokenizer().config.steps_per_quarter


def filled_notes(midi: miditoolkit.MidiFile, spans: list[tuple[int, int]]) -> list[miditoolkit.Note]:
    keep = set(kept_notes(midi, spans, ticks_per_step(midi)))
    return [n for inst in midi.instruments for n in inst.notes
            if (inst.name, inst.program, inst.is_drum, n.start, n.end, n.pitch, n.velocity) not in keep]


def check_piece(original: Path, piece, ranges: list[tuple[int, int]], metre: str | None = "index") -> None:
    """Kept bars identical (in memory and in the file written and read back), the filled notes inside their
    bars, the tokens' bars outside the gaps the original's, and exactly as many bars as the original."""
    source = miditoolkit.MidiFile(str(original))
    tokenizer = REMITokenizer()
    _, bars = load_piece(original, tokenizer, metre)
    assert kept_identical(source, piece.midi, piece.infilled, ticks_per_step(source))
    with tempfile.TemporaryDirectory() as folder:
        piece.midi.dump(str(Path(folder) / "written.mid"))
        written = miditoolkit.MidiFile(str(Path(folder) / "written.mid"))
    assert kept_identical(source, written, piece.infilled, ticks_per_step(source))
    for note in filled_notes(piece.midi, piece.infilled):
        assert any(lo <= note.start and note.end <= hi for lo, hi in piece.infilled), note
    assert piece.infilled == [(round(bars.starts[a - 1] * ticks_per_step(source)),
                               round((bars.starts[b - 1] + bars.lengths[b - 1]) * ticks_per_step(source)))
                              for a, b in ranges]
    after = token_bars(piece.ids, tokenizer)
    assert len(after) == len(bars.bars)
    inside = {i for a, b in ranges for i in range(a - 1, b)}
    for i, (old, new) in enumerate(zip(bars.bars, after)):
        if i not in inside:
            assert old == new, f"bar {i + 1} changed"


def token_bars(ids: list[int], tokenizer: REMITokenizer) -> list[list[int]]:
    return split_bars(ids, tokenizer.vocab)


@pytest.mark.parametrize("spec, expected", [
    ("9-12", [(9, 12)]), ("25-28,9-12", [(9, 12), (25, 28)]), (7, [(7, 7)]), (" 3 - 4 , 8", [(3, 4), (8, 8)]),
    (["9-12", "20-21"], [(9, 12), (20, 21)])])
def test_parse_bar_ranges(spec, expected) -> None:
    assert parse_bar_ranges(spec) == tuple(BarRange(a, b) for a, b in expected)


@pytest.mark.parametrize("spec, message", [
    ("12-9", "runs backwards"), ("0-3", "numbered from 1"), ("9-12,11-14", "overlap"), ("9-12,13-16", "touch"),
    ("abc", "use bar ranges"), ("9-", "use bar ranges"), ("", "use bar ranges")])
def test_bad_bar_ranges(spec, message) -> None:
    with pytest.raises(UserError, match=message):
        parse_bar_ranges(spec)


@pytest.mark.parametrize("extra, message", [
    ({}, "needs a prompt"), ({"prompt": "x.mid", "prompt_bars": 8}, "prompt_bars"),
    ({"prompt": "x.mid", "bars": 8}, "bars"), ({"prompt": "x.mid", "bpm": 90}, "bpm"),
    ({"prompt": "x.mid", "include_prompt": False}, "include_prompt"),
    ({"prompt": "x.mid", "infill_candidates": 0}, "infill_candidates")])
def test_options_that_cannot_go_with_infill(extra, message) -> None:
    with pytest.raises(UserError, match=message):
        GenerateOptions.from_mapping({"infill": "3-4", **extra})


def test_infill_keeps_every_other_bar(note_checkpoint: Path, pop909_dir: Path) -> None:
    song = pop909_dir / "001.mid"
    kwargs = dict(infill="5-6,11-13", prompt_time_signature="index", num_samples=2, seed=3, infill_candidates=2,
                  log=None, progress=False)
    pieces = generate(note_checkpoint, song, **kwargs)
    assert len(pieces) == 2
    for piece in pieces:
        check_piece(song, piece, [(5, 6), (11, 13)])
        assert [g["bars"] for g in piece.infill] == ["5-6", "11-13"]
        assert all(len(g["suffix_logprob"]) == 2 and g["chosen"] in (0, 1) for g in piece.infill)
        assert piece.continuation_notes == sum(g["notes"] for g in piece.infill) == len(
            filled_notes(piece.midi, piece.infilled))
    assert pieces[0].ids != pieces[1].ids  # two samples, two fillings
    again = generate(note_checkpoint, song, **kwargs)
    assert [p.ids for p in again] == [p.ids for p in pieces]  # same seed, same pieces


def test_a_model_trained_for_infill_reads_the_fill_in_the_middle_layout(note_checkpoint: Path, pop909_dir: Path,
                                                                       tmp_path: Path) -> None:
    """A checkpoint whose config says it was trained with fill-in-the-middle crops (train.fim_rate > 0) reads
    [BOS] after [BOS] before: the session's grammar walk restarts at the second BOS, and every kept bar stays."""
    import torch

    from musicgen.generation.infill import trained_for_infill

    data = torch.load(note_checkpoint, map_location="cpu", weights_only=True)
    data["config"] = {**(data.get("config") or {}), "train": {**((data.get("config") or {}).get("train") or {}),
                                                                "fim_rate": 0.3}}
    fim = tmp_path / "fim.pt"
    torch.save(data, fim)
    assert trained_for_infill(data["config"]) and not trained_for_infill(
        torch.load(note_checkpoint, map_location="cpu", weights_only=True).get("config"))
    song = pop909_dir / "001.mid"
    pieces = generate(fim, song, infill="9-12", prompt_time_signature="index", seed=2, infill_candidates=2,
                      log=None, progress=False)
    check_piece(song, pieces[0], [(9, 12)])
    plain = generate(note_checkpoint, song, infill="9-12", prompt_time_signature="index", seed=2,
                     infill_candidates=2, log=None, progress=False)
    assert pieces[0].ids != plain[0].ids  # the same seed reads another context, so writes other bars


def test_controls_apply_inside_the_gap(note_checkpoint: Path, pop909_dir: Path) -> None:
    song = pop909_dir / "002.mid"
    piece = generate(note_checkpoint, song, infill="3-6", prompt_time_signature="index", key="C", chords="C G Am F",
                     seed=1, infill_candidates=1, log=None, progress=False)[0]
    check_piece(song, piece, [(3, 6)])
    tokenizer = REMITokenizer()
    vocab = tokenizer.vocab
    chords = {vocab.tokens[t] for bar in token_bars(piece.ids, tokenizer)[2:6] for t in bar
              if vocab.type_of(t) == TokenType.CHORD}
    assert chords and chords <= {"Chord_C:maj", "Chord_G:maj", "Chord_A:min", "Chord_F:maj"}
    pitches = [n.pitch for n in filled_notes(piece.midi, piece.infilled)]
    assert pitches and all(p % 12 in (0, 2, 4, 5, 7, 9, 11) for p in pitches)
    assert piece.infill[0]["controls"]["forced_chords"] > 0


def test_filled_notes_never_cut_a_held_note(note_checkpoint: Path, tmp_path: Path) -> None:
    """A kept note held across the gap's first bar line keeps its length in the written file whatever the
    filled bars play (a filled note of its pitch starting under it would end it at that note-on); the gap
    here can only stay silent."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    piano = miditoolkit.Instrument(program=0, name="piano")
    for bar in (0, 5, 6, 7):  # whole-bar chords of every MIDI pitch in bars 1 and 6-8 ...
        piano.notes += [miditoolkit.Note(70, p, bar * 1920, bar * 1920 + 1920) for p in range(128)]
    # ... and every pitch held from the middle of bar 2 to the middle of bar 5, over the gap (bars 3-4): any
    # note the model writes there starts under a held note of its pitch
    piano.notes += [miditoolkit.Note(90, p, 1 * 1920 + 960, 4 * 1920 + 960) for p in range(128)]
    midi.instruments.append(piano)
    midi.dump(str(tmp_path / "held.mid"))
    for seed in range(3):
        piece = generate(note_checkpoint, tmp_path / "held.mid", infill="3-4", seed=seed, infill_candidates=1,
                         log=None, progress=False)[0]
        check_piece(tmp_path / "held.mid", piece, [(3, 4)], metre="file")
        assert piece.infill[0]["notes"] == 0


def made_up_song(path: Path, ticks_per_beat: int, metres: list[tuple[int, int, int]], bars: int) -> Path:
    """A piano file with one note per beat, at ``ticks_per_beat``, with time signature events (bar index, n, d)."""
    midi = miditoolkit.MidiFile(ticks_per_beat=ticks_per_beat)
    piano = miditoolkit.Instrument(program=0, name="piano")
    tick, metre_at = 0, {b: (n, d) for b, n, d in metres}
    metre = (4, 4)
    for bar in range(bars):
        if bar in metre_at:
            metre = metre_at[bar]
            midi.time_signature_changes.append(miditoolkit.TimeSignature(*metre, tick))
        beat = ticks_per_beat * 4 // metre[1]
        for k in range(metre[0]):
            piano.notes.append(miditoolkit.Note(80, 60 + (bar + k) % 12, tick + k * beat, tick + (k + 1) * beat))
        tick += metre[0] * beat
    midi.instruments.append(piano)
    midi.tempo_changes.append(miditoolkit.TempoChange(100.0, 0))
    midi.dump(str(path))
    return path


def test_other_resolution_and_metre(note_checkpoint: Path, tmp_path: Path) -> None:
    song = made_up_song(tmp_path / "waltz.mid", 96, [(0, 4, 4), (4, 3, 4)], 16)
    piece = generate(note_checkpoint, song, infill="6-8,12", seed=2, infill_candidates=1, log=None,
                     progress=False)[0]
    check_piece(song, piece, [(6, 8), (12, 12)], metre="file")
    assert piece.midi.ticks_per_beat == 96
    assert piece.infilled[0] == (4 * 4 * 96 + 3 * 96, 4 * 4 * 96 + 4 * 3 * 96)  # bars 6-8 are 3/4 bars
    with pytest.raises(UserError, match="metre changes inside"):
        generate(note_checkpoint, song, infill="4-6", seed=2, log=None, progress=False)
    starts_waltz = generate(note_checkpoint, song, infill="5-6", seed=2, infill_candidates=2, log=None,
                            progress=False)[0]  # the range starts where 3/4 starts: it is written in 3/4
    check_piece(song, starts_waltz, [(5, 6)], metre="file")
    assert starts_waltz.infilled[0] == (4 * 4 * 96, 4 * 4 * 96 + 2 * 3 * 96)
    with pytest.raises(UserError, match="has 16 bars"):
        generate(note_checkpoint, song, infill="15-17", seed=2, log=None, progress=False)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "generate.py"), *args, "progress=false"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli(note_checkpoint: Path, pop909_dir: Path, tmp_path: Path) -> None:
    song = pop909_dir / "001.mid"
    proc = run_cli(f"checkpoint={note_checkpoint}", f"prompt={song}", "prompt_time_signature=index",
                   "infill=5-6,11-13", "infill_candidates=2", "seed=1", f"output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "sample_00.json").read_text())
    assert [g["bars"] for g in meta["infill"]] == ["5-6", "11-13"] and meta["stop_reason"] == "infill"
    assert (tmp_path / "sample_00.png").is_file()
    for args, message in ((["infill=12-9"], "runs backwards"), (["infill=900-901"], "lie beyond its end"),
                          (["infill=5-6", "prompt_bars=4"], "prompt_bars")):
        proc = run_cli(f"checkpoint={note_checkpoint}", f"prompt={song}", *args, f"output_dir={tmp_path / 'x'}")
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped checkpoint")
def test_shipped_model_fills_with_music(pop909_dir: Path) -> None:
    song = pop909_dir / "020.mid"
    piece = generate(SHIPPED, song, infill="17-20", prompt_time_signature="index", seed=1, log=None,
                     progress=False)[0]
    check_piece(song, piece, [(17, 20)])
    notes = filled_notes(piece.midi, piece.infilled)
    assert len(notes) >= 8  # four 2/4 bars of pop piano, not silence
    assert len(piece.infill[0]["suffix_logprob"]) == GenerateOptions().infill_candidates
