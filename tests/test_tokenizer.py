"""REMI tokenizer: exact round trips on real MIDI, robustness, grammar, vocabulary, the check command."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import miditoolkit
import numpy as np
import pytest

from musicgen.data.sources import read_pop909_metres
from musicgen.tokenizer import (MidiReadError, REMITokenizer, TokenType, TokenizerConfig, Vocabulary,
                                note_start_mask, output_ticks_per_beat)
from musicgen.tokenizer.check import main as check_main

TOK = REMITokenizer()


def _notes_in_ticks(midi: miditoolkit.MidiFile) -> Counter:
    return Counter((n.start, n.end, n.pitch, n.velocity, inst.is_drum, inst.program)
                   for inst in midi.instruments for n in inst.notes)


def test_roundtrip_pop909_sample_is_exact(pop909_dir: Path) -> None:
    metres = read_pop909_metres(pop909_dir)
    files = sorted(pop909_dir.glob("*.mid"))[::60]
    assert len(files) >= 15
    tps = output_ticks_per_beat(TOK.config) // TOK.config.steps_per_quarter
    for path in files:
        midi = miditoolkit.MidiFile(str(path))
        metre = metres[int(path.stem)]
        score, report = TOK.quantize(midi, metre)
        assert report.notes_in == sum(len(i.notes) for i in midi.instruments) == len(score.notes)
        decoded = TOK.decode(TOK.encode(midi, metre))
        # Every quantized note comes back: same pitch, onset on the same grid step, duration and velocity bin.
        expected = Counter((n.onset * tps, (n.onset + n.duration) * tps, n.pitch,
                            TOK.quantizer.bins.velocity_of_bin[n.velocity], False, 0) for n in score.notes)
        assert _notes_in_ticks(decoded) == expected, path.name
        assert [(ts.numerator, ts.denominator) for ts in decoded.time_signature_changes] == [metre]
        back, _ = TOK.quantize(decoded)
        assert back.tempos == score.tempos and back.time_signatures == score.time_signatures


def test_quantize_only_snaps_onsets_and_keeps_every_note(pop909_dir: Path) -> None:
    midi = miditoolkit.MidiFile(str(pop909_dir / "003.mid"))
    score, _ = TOK.quantize(midi, (2, 4))
    step_ticks = midi.ticks_per_beat / TOK.config.steps_per_quarter
    originals = sorted((n.pitch, n.start) for i in midi.instruments for n in i.notes)
    quantized = sorted((n.pitch, n.onset) for n in score.notes)
    assert [p for p, _ in originals] == [p for p, _ in quantized]
    assert Counter(p for p, _ in originals) == Counter(n.pitch for n in score.notes)
    errors = [abs(n.onset * step_ticks - n_start) for (_, n_start), n in
              zip(sorted(((n.pitch, n.start) for i in midi.instruments for n in i.notes)), sorted(
                  score.notes, key=lambda q: (q.pitch, q.onset)))]
    assert max(errors) <= step_ticks / 2 + 1e-9


def _oddities(oddities_dir: Path) -> tuple[list[Path], list[Path]]:
    with (oddities_dir / "index.tsv").open(newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    corrupt = [oddities_dir / r["file"] for r in rows if "miditoolkit=FAIL" in r["parse"]]
    valid = [oddities_dir / r["file"] for r in rows if "miditoolkit=FAIL" not in r["parse"]]
    return valid, corrupt


def test_oddities_valid_files_roundtrip_and_corrupt_ones_fail_clearly(oddities_dir: Path) -> None:
    valid, corrupt = _oddities(oddities_dir)
    assert len(valid) == 50 and len(corrupt) == 8
    for path in valid:
        midi = miditoolkit.MidiFile(str(path))
        score, _ = TOK.quantize(midi)
        ids = TOK.encode(midi)
        back, report = TOK.decode_to_score(ids)
        assert report.skipped == 0, path.name
        assert Counter(back.notes) == Counter(score.notes), path.name
        assert back.tempos == score.tempos and back.time_signatures == score.time_signatures, path.name
        TOK.decode(ids)  # writes MIDI objects without raising
    for path in corrupt:
        with pytest.raises(MidiReadError) as info:
            TOK.encode(path)
        message = str(info.value)
        assert path.name in message and "\n" not in message and info.value.cause


def test_multitrack_drums_and_programs_survive(oddities_dir: Path) -> None:
    midi = miditoolkit.MidiFile(str(oddities_dir / "miditok__Funkytown.mid"))
    decoded = TOK.decode(TOK.encode(midi))
    def per_program(m):
        return Counter((i.is_drum, 0 if i.is_drum else int(i.program)) for i in m.instruments for _ in i.notes)
    assert per_program(decoded) == per_program(midi)
    assert any(i.is_drum for i in decoded.instruments)


def test_metre_changes_and_unsupported_metre(tmp_path: Path) -> None:
    midi = miditoolkit.MidiFile(ticks_per_beat=96)
    piano = miditoolkit.Instrument(program=0)
    for beat in range(40):
        piano.notes.append(miditoolkit.Note(80, 60 + beat % 12, beat * 96, beat * 96 + 48))
    midi.instruments.append(piano)
    midi.time_signature_changes = [miditoolkit.TimeSignature(3, 4, 0), miditoolkit.TimeSignature(6, 8, 96 * 9),
                                   miditoolkit.TimeSignature(5, 4, 96 * 21)]
    score, report = TOK.quantize(midi)
    assert score.time_signatures == [(0, 3, 4), (36, 6, 8), (84, 5, 4)]
    assert not report.losses()
    decoded = TOK.decode(TOK.encode(midi))
    assert [(t.numerator, t.denominator) for t in decoded.time_signature_changes] == [(3, 4), (6, 8), (5, 4)]
    midi.time_signature_changes = [miditoolkit.TimeSignature(7, 1, 0)]
    _, report = TOK.quantize(midi)
    assert report.unsupported_time_signatures == ["7/1"] and "replaced by 4/4" in report.losses()[0]


def test_decode_never_crashes_on_arbitrary_ids() -> None:
    rng = np.random.default_rng(0)
    n = len(TOK.vocab)
    for _ in range(100):
        ids = rng.integers(-5, n + 5, size=int(rng.integers(0, 400))).tolist()
        midi, report = TOK.decode_with_report(ids)
        assert report.n_tokens == len(ids) and 0 <= report.skipped <= len(ids)
        assert isinstance(midi, miditoolkit.MidiFile)


def test_grammar_mask_agrees_with_allows_and_accepts_real_music(pop909_dir: Path) -> None:
    ids = TOK.encode(pop909_dir / "010.mid", (2, 4))
    grammar = TOK.grammar
    state = grammar.initial_state()
    all_ids = range(len(TOK.vocab))
    for i, token in enumerate(ids[:400]):
        mask = grammar.allowed_mask(state)
        assert mask[token] and grammar.allows(state, token)
        if i % 37 == 0:
            assert mask.tolist() == [grammar.allows(state, t) for t in all_ids]
            types = grammar.allowed_types(state)
            assert {TOK.vocab.type_of(t) for t in all_ids if mask[t]} == set(types)
        state = grammar.advance(state, token)
    # After a Velocity only a Pitch may follow; after EOS only PAD.
    v = TOK.vocab
    s = grammar.advance(grammar.advance(grammar.initial_state(), v.bos_id), v.bar_id)
    s = grammar.advance(s, v.id_of(TokenType.POSITION, 0))
    s = grammar.advance(s, v.id_of(TokenType.VELOCITY, 3))
    assert grammar.allowed_types(s) == {TokenType.PITCH}
    assert grammar.allowed_types(grammar.advance(grammar.initial_state(), v.bos_id)) == {TokenType.BAR, TokenType.EOS}
    ended = grammar.advance(grammar.advance(grammar.initial_state(), v.bos_id), v.eos_id)
    assert grammar.allowed_types(ended) == {TokenType.PAD}


def test_note_start_mask_is_what_opens_a_note_in_real_music(pop909_dir: Path) -> None:
    """The one mask the density rules bias (guards, controls) is exactly the tokens that open a note: every
    note of a real song starts with one of them, right after which the grammar wants a Pitch (or a Velocity)."""
    v, grammar = TOK.vocab, TOK.grammar
    mask = note_start_mask(v)
    assert mask.tolist() == [v.type_of(t) in (TokenType.PROGRAM, TokenType.VELOCITY) for t in range(len(v))]
    ids = TOK.encode(pop909_dir / "010.mid", (2, 4))
    state, openers, pitches, previous = grammar.initial_state(), 0, 0, -1
    for token in ids:
        state = grammar.advance(state, token)
        openers += bool(mask[token] and not (previous >= 0 and mask[previous]))  # a note's first token
        pitches += v.type_of(token) == TokenType.PITCH
        if mask[token]:
            assert grammar.allowed_types(state) <= {TokenType.VELOCITY, TokenType.PITCH}
        previous = token
    assert pitches > 100 and openers == pitches


def test_positions_never_go_backwards_and_stay_in_the_bar() -> None:
    v, grammar = TOK.vocab, TOK.grammar
    s = grammar.advance(grammar.advance(grammar.initial_state(), v.bos_id), v.bar_id)
    s = grammar.advance(s, v.time_signature_id(3, 4))
    s = grammar.advance(s, v.id_of(TokenType.POSITION, 5))
    s = grammar.advance(s, v.id_of(TokenType.TEMPO, 10))
    allowed_positions = [int(v.values[t]) for t in v.ids_of_type(TokenType.POSITION) if grammar.allowed_mask(s)[t]]
    assert allowed_positions == list(range(6, 12))


def test_vocabulary_is_saved_versioned_and_mismatch_is_an_error(tmp_path: Path) -> None:
    TOK.vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(tmp_path / "vocab.json")
    assert loaded.tokens == TOK.vocab.tokens and loaded.fingerprint == TOK.vocab.fingerprint
    other = Vocabulary(TokenizerConfig(chords=False))
    assert other.fingerprint != TOK.vocab.fingerprint
    (tmp_path / "bad.json").write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match="not a musicgen vocabulary"):
        Vocabulary.load(tmp_path / "bad.json")


def test_check_command_reports_each_file(tmp_path: Path, pop909_dir: Path, oddities_dir: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "song.mid").write_bytes((pop909_dir / "005.mid").read_bytes())
    (folder / "broken.mid").write_bytes((oddities_dir / "jazzsoft__test-not-a-midi-file.mid").read_bytes())
    code = check_main([str(folder), "--out", str(tmp_path / "out"), "--time-signature", "2/4"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert lines[-1] == "checked 2 files: 1 exact, 0 lossy, 1 unreadable"
    assert any("song.mid" in line and "exact" in line for line in lines)
    assert any("broken.mid" in line and "UNREADABLE" in line for line in lines)
    assert (tmp_path / "out" / "song.mid").exists()


def test_grammar_walk_skips_what_the_grammar_refuses() -> None:
    v = TOK.vocab
    ids = [v.bos_id, v.id_of(TokenType.POSITION, 0), v.bar_id, v.id_of(TokenType.POSITION, 3),
           v.id_of(TokenType.POSITION, 2), v.id_of(TokenType.VELOCITY, 3), v.id_of(TokenType.PITCH, 60),
           v.duration_id(4), v.eos_id]
    steps = list(TOK.grammar.walk(ids))
    assert [s.allowed for s in steps] == [True, False, True, True, False, True, True, True, True]
    assert steps[1].state == steps[0].state and steps[4].state == steps[3].state and steps[-1].state.ended
    assert [s.index for s in steps] == list(range(len(ids)))
    assert TOK.decode_with_report(ids)[1].skipped == 2
    assert TOK.grammar.can_end(steps[-2].state) and not TOK.grammar.can_end(steps[3].state)


def test_bar_lines_a_metre_change_inside_a_bar() -> None:
    """The tokenizer moves it to the next bar line; the music statistics split the bar at it."""
    from musicgen.tokenizer import bar_lines

    def length(num: int, den: int) -> int:
        return 16 * num // den

    changes = [(0, 4, 4), (8, 3, 4)]
    assert [b[:2] for b in bar_lines(changes, length, 30)] == [(0, 16), (16, 28), (28, 40)]
    assert [b[:2] for b in bar_lines(changes, length, 30, split_at_changes=True)] == [(0, 8), (8, 20), (20, 32)]
    assert bar_lines([], length, 0) == [(0, 16, 4, 4)]
