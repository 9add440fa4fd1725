"""generate.py and musicgen.generation.generate end to end, with a tiny random checkpoint.

Covers: files written exactly where asked (.mid with notes, .png, .json), same seed -> identical MIDI,
prompt continuation of a real POP909 song keeps the prompt's notes and tempo, continuation-only output,
WAV preview fallback, and one-line errors with a non-zero exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import miditoolkit
import pytest

from musicgen.config import UserError
from musicgen.generation import GenerateOptions, generate, load_prompt
from musicgen.tokenizer import REMITokenizer
from musicgen.inference import file_sha256


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(note_checkpoint: Path) -> Path:
    return note_checkpoint


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(REPO / "generate.py"), *args, "progress=false"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def notes_of(midi: miditoolkit.MidiFile) -> list[tuple[int, int, int, int]]:
    return sorted((n.start, n.end, n.pitch, n.velocity) for inst in midi.instruments for n in inst.notes)


def test_cli_end_to_end_and_same_seed(checkpoint: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "a", tmp_path / "b" / "nested"]
    for out in outs:
        proc = run_cli(f"checkpoint={checkpoint}", f"output_dir={out}", "bars=4", "seed=1")
        assert proc.returncode == 0, proc.stderr
        assert str(out) in proc.stdout  # says where the files went
    files = sorted(p.name for p in outs[0].iterdir())
    assert files == ["sample_00.json", "sample_00.mid", "sample_00.png"]
    midi = miditoolkit.MidiFile(str(outs[0] / "sample_00.mid"))
    assert notes_of(midi)
    assert (outs[0] / "sample_00.mid").read_bytes() == (outs[1] / "sample_00.mid").read_bytes()
    meta = json.loads((outs[0] / "sample_00.json").read_text())
    assert meta["seed"] == 1 and meta["skipped"] == 0 and meta["n_notes"] == len(notes_of(midi))
    assert meta["checkpoint"]["sha256"] == file_sha256(checkpoint)
    assert meta["stop"]["bars"] == 4 and meta["sampling"]["top_p"] == 0.95 and meta["tokens"] > 1
    assert meta["seconds"] > 0


@pytest.mark.parametrize("args, message", [
    (["prompt_bars=2", "prompt_seconds=3", "prompt=x.mid"], "not both"),
    (["prompt={readme}"], "not a MIDI file"),
])
def test_cli_bad_input_is_one_line_error(checkpoint: Path, tmp_path: Path, args: list[str], message: str) -> None:
    args = [a.format(readme=REPO / "pyproject.toml") for a in args]
    proc = run_cli(f"checkpoint={checkpoint}", f"output_dir={tmp_path}", *args)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not list(tmp_path.iterdir())


def test_cli_missing_checkpoint(tmp_path: Path) -> None:
    proc = run_cli(f"checkpoint={tmp_path / 'nope.pt'}", f"output_dir={tmp_path}")
    assert proc.returncode != 0 and proc.stderr.strip().startswith("error: checkpoint")
    assert "no such file" in proc.stderr


@pytest.mark.parametrize("options, message", [
    ({"top_p": 1.5}, "top_p"), ({"top_p": 0}, "top_p"), ({"num_samples": 0}, "num_samples"),
    ({"prompt_bars": 4}, "need a prompt"), ({"bars": 0}, "bars"), ({"seconds": -1}, "seconds"),
    ({"render": "mp3"}, "render"), ({"name": "a/b"}, "name"), ({"colour": 1}, "unknown generate option"),
])
def test_contradictory_options(options: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        GenerateOptions.from_mapping(options)


def test_bad_prompts(checkpoint: Path, tmp_path: Path, pop909_dir: Path) -> None:
    tokenizer = REMITokenizer()
    empty = tmp_path / "empty.mid"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty file"):
        load_prompt(empty, tokenizer)
    silent = tmp_path / "silent.mid"
    miditoolkit.MidiFile().dump(str(silent))
    with pytest.raises(UserError, match="has no notes"):
        load_prompt(silent, tokenizer)
    with pytest.raises(UserError, match="no notes in its first 1 bar"):
        load_prompt(pop909_dir / "001.mid", tokenizer, prompt_bars=1)  # 001 opens with a silent bar


def test_prompt_continuation_keeps_prompt(checkpoint: Path, tmp_path: Path, pop909_dir: Path) -> None:
    song = pop909_dir / "001.mid"
    tokenizer = REMITokenizer()
    prompt = load_prompt(song, tokenizer, prompt_bars=8, time_signature="index")
    expected = tokenizer.decode(prompt.ids)
    pieces = generate(checkpoint, song, prompt_bars=8, prompt_time_signature="index", bars=4, num_samples=2,
                      max_tokens=300, seed=5, output_dir=tmp_path, temperature=1.1, top_p=0.95, progress=False, log=None)
    assert len(pieces) == 2
    for piece in pieces:
        assert piece.report.skipped == 0 and piece.ids[:piece.prompt_length] == prompt.ids
        midi = miditoolkit.MidiFile(str(piece.files["mid"]))
        start = piece.start_tick
        assert start == 8 * 2 * midi.ticks_per_beat  # 8 bars of 2/4
        assert [n for n in notes_of(midi) if n[0] < start] == notes_of(expected)  # the prompt, note for note
        assert notes_of(expected)[0] in notes_of(midi)  # its first-bar notes in particular
        assert midi.tempo_changes[0].tempo == pytest.approx(expected.tempo_changes[0].tempo, rel=1e-4)
        assert [(t.numerator, t.denominator) for t in midi.time_signature_changes][:1] == [(2, 4)]
        assert piece.continuation_ids[0] == tokenizer.vocab.bar_id  # the continuation starts at a bar line
        assert piece.files["png"].is_file() and piece.files["json"].is_file()

    alone = generate(checkpoint, song, prompt_bars=8, prompt_time_signature="index", bars=4, seed=5, max_tokens=300,
                     include_prompt=False, progress=False, log=None, render="wav", output_dir=tmp_path / "alone")
    midi = alone[0].midi
    assert all(n[0] >= alone[0].start_tick for n in notes_of(midi))
    assert midi.tempo_changes[0].tempo == pytest.approx(expected.tempo_changes[0].tempo, rel=1e-4)
    with wave.open(str(alone[0].files["wav"])) as handle:
        assert handle.getnframes() > 0


def test_prompt_seconds_cut(pop909_dir: Path) -> None:
    tokenizer = REMITokenizer()
    prompt = load_prompt(pop909_dir / "001.mid", tokenizer, prompt_seconds=6.0, time_signature="index")
    midi = tokenizer.decode(prompt.ids)
    starts = [n.start for inst in midi.instruments for n in inst.notes]
    assert starts and max(midi.get_tick_to_time_mapping()[s] for s in starts) < 6.0
    full = tokenizer.decode(load_prompt(pop909_dir / "001.mid", tokenizer, time_signature="index").ids)
    later = [n.start for inst in full.instruments for n in inst.notes if n.start > max(starts)]
    assert full.get_tick_to_time_mapping()[min(later)] >= 6.0 - 1e-6  # nothing starting before 6 s was cut
