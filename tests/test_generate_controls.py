"""Controls imposed at decode time (musicgen/generation/controls.py): chord chart, bpm, metre, density, key.

The models are tiny and untrained: what is tested is that the controls hold exactly in the token stream
(every chord slot carries the chart's Chord token, in order; one Tempo token of the asked bin; 12-step bars for
3/4; pitches in the key), with and without a prompt, for a batch, and that every piece still decodes with
zero skipped tokens. Whether a *trained* model plays the chart is measured by benchmarks/controls.py.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.config import UserError
from musicgen.generation import (ControlConfig, GenerateOptions, GenerationSession, SamplingConfig, StopConfig,
                                 generate, load_prompt, parse_chart, parse_chord, parse_key, unconditional_prompt)
from musicgen.generation.chords import chord_slots
from musicgen.tokenizer import chord_name, chord_pitch_classes
from musicgen.generation.guards import GuardConfig
from musicgen.model import build_model
from musicgen.tokenizer import Phase, REMITokenizer, TokenType
from musicgen.tokenizer import DRUM_PROGRAM, Bins
from musicgen.inference.checkpoint import save_checkpoint

from support import TINY

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def balanced_model(tokenizer: REMITokenizer):
    """An untrained model whose choice between another note and moving on is balanced (an untrained model
    otherwise starts a note ~99% of the time, 161 note-start tokens against a few positions, and always hits
    max_notes_per_onset): the final LayerNorm's bias adds a fixed preference per token family through
    column 0 of the tied embedding (as support.lean_towards_notes does)."""
    torch.manual_seed(0)
    model = build_model(TINY, len(tokenizer.vocab)).eval()
    vocab = tokenizer.vocab
    family = {TokenType.EOS: -6.0, TokenType.BAR: 1.0, TokenType.TIME_SIG: -5.0, TokenType.TEMPO: -4.0,
              TokenType.CHORD: -4.0, TokenType.PROGRAM: -6.0, TokenType.VELOCITY: 2.5}
    pref = torch.zeros(len(vocab))
    for kind, value in family.items():
        span = vocab.ranges[kind]
        pref[span.start:span.stop] = value - math.log(span.size)
    with torch.no_grad():
        model.ln_f.weight.mul_(0.3)
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 4.0
        model.embed.weight[:, 0] = pref / 4.0
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, model, tokenizer: REMITokenizer) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model_config=model.config, model_state=model.state_dict(), vocab=tokenizer.vocab,
                    config={"model": TINY}, step=0, best_val_nll=None, train_seq_len=None)
    return path


def run(model, tokenizer, controls, prompt=None, num_samples=3, seed=0, bars=8, **stop):
    stop = {"allow_eos": False, "max_tokens": 8000, **stop}
    session = GenerationSession(model, tokenizer, SamplingConfig(), StopConfig(bars=bars, **stop), seed,
                                controls=controls)
    return session.run(prompt or unconditional_prompt(tokenizer), num_samples, progress=False)


def continuation_bars(tokenizer: REMITokenizer, ids: list[int], prompt_length: int) -> list[dict]:
    """Per continuation bar (those that start with a Bar token after the prompt): its grammar state after the
    optional TimeSig, and its Chord / Tempo / TimeSig tokens as (position, value)."""
    grammar, vocab = tokenizer.grammar, tokenizer.vocab
    state = grammar.initial_state()
    bars: list[dict] = []
    for i, token in enumerate(ids):
        assert grammar.allows(state, token)
        state = grammar.advance(state, token)
        if i < prompt_length:
            continue
        value = int(vocab.values[token])
        if state.phase == Phase.BAR:
            bars.append({"state": state, "chords": [], "tempos": [], "timesigs": []})
        elif not bars:
            continue
        elif state.phase == Phase.TIME_SIG:
            bars[-1]["state"] = state
            bars[-1]["timesigs"].append(value)
        elif state.phase == Phase.CHORD:
            bars[-1]["chords"].append((state.position, value))
        elif state.phase == Phase.TEMPO:
            bars[-1]["tempos"].append((state.position, value))
    return bars


def assert_chart_imposed(tokenizer, result, chart, bars: int | None) -> None:
    """Every chord slot of every continuation bar holds the chart's Chord token, in order, and nothing else
    (``bars=None``: a piece stopped by a token limit, whose last bar may be cut short)."""
    assert tokenizer.decode_with_report(result.ids)[1].skipped == 0
    found = continuation_bars(tokenizer, result.ids, result.prompt_length)
    if bars is not None:
        assert result.stop_reason == "bars" and result.n_bars == bars and len(found) == bars
    for k, bar in enumerate(found):
        state = bar["state"]
        expected = chord_slots(chart.bar(k), state.bar_length, state.metre)
        if bars is None and k == len(found) - 1:
            expected = expected[:len(bar["chords"])]
        assert bar["chords"] == expected, (k, [(p, chord_name(c)) for p, c in bar["chords"]])
    assert result.controls["forced_chords"] == sum(len(b["chords"]) for b in found)
    assert result.controls["missed_chord_slots"] == 0 and result.controls["fallbacks"] == 0


# --- parsing -------------------------------------------------------------------------------------------------
def test_chord_symbols() -> None:
    names = {s: chord_name(parse_chord(s)) for s in
             ["A", "Am", "Amin", "F#m7", "Bb", "Bbmaj7", "Ebm", "Gsus4", "Gsus", "D7", "Cdim", "Caug", "C+", "CM7",
              "Cm7", "Db", "E:min7", "C#:maj", "B♭"]}
    assert names == {"A": "A:maj", "Am": "A:min", "Amin": "A:min", "F#m7": "F#:min7", "Bb": "A#:maj",
                     "Bbmaj7": "A#:maj7", "Ebm": "D#:min", "Gsus4": "G:sus4", "Gsus": "G:sus4", "D7": "D:dom7",
                     "Cdim": "C:dim", "Caug": "C:aug", "C+": "C:aug", "CM7": "C:maj7", "Cm7": "C:min7",
                     "Db": "C#:maj", "E:min7": "E:min7", "C#:maj": "C#:maj", "B♭": "A#:maj"}
    vocab = REMITokenizer().vocab
    for symbol, name in names.items():  # the chord index is the vocabulary's Chord index
        assert vocab.tokens[vocab.id_of(TokenType.CHORD, parse_chord(symbol))] == f"Chord_{name}"
    assert chord_pitch_classes(parse_chord("E")) == {4, 8, 11}


def test_chart_syntax() -> None:
    assert parse_chart("Am F C G").names() == [["A:min"], ["F:maj"], ["C:maj"], ["G:maj"]]
    assert parse_chart("Am F | C G").names() == [["A:min", "F:maj"], ["C:maj", "G:maj"]]
    assert parse_chart("| Am | F G |").names() == [["A:min"], ["F:maj", "G:maj"]]
    chart = parse_chart("Am F | C")
    assert [chart.bar(k) for k in range(4)] == [chart.bars[0], chart.bars[1]] * 2  # it repeats
    # slots: halves in 4/4, 2/4, 6/8; the bar start only in 3/4 unless the bar has two chords
    assert chord_slots((5,), 16, (4, 4)) == [(0, 5), (8, 5)]
    assert chord_slots((5,), 8, (2, 4)) == [(0, 5), (4, 5)]
    assert chord_slots((5,), 12, (6, 8)) == [(0, 5), (6, 5)]
    assert chord_slots((5,), 12, (3, 4)) == [(0, 5)]
    assert chord_slots((5, 7), 12, (3, 4)) == [(0, 5), (6, 7)]


@pytest.mark.parametrize("chords, message", [
    ("Am H7 C", "unknown chord symbol 'H7'"), ("Am Fmaj9", "'Fmaj9'"), ("am", "'am'"), ("", "at least one"),
    ("Am | | C", "bar 2 is empty"), ("Am F G | C", "has 3 chords"),
])
def test_bad_charts(chords: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_chart(chords)
    with pytest.raises(UserError, match=message):
        GenerateOptions.from_mapping({"chords": chords})


def test_other_options() -> None:
    assert parse_key("Am") == ("A minor", frozenset({9, 11, 0, 2, 4, 5, 7}))
    assert parse_key("Eb")[0] == "Eb major" and parse_key("F# minor")[0] == "F# minor"
    assert parse_key("D major")[1] == frozenset({2, 4, 6, 7, 9, 11, 1})
    cfg = ControlConfig(density="high", bpm="96", time_signature="3/4")
    assert cfg.density_factor == 3.0 and cfg.bpm == 96.0 and cfg.metre == (3, 4)
    assert ControlConfig(density=2).density_factor == 2.0 and ControlConfig(density="low").density_factor == 1 / 3
    for bad, message in [({"key": "H"}, "key="), ({"chord_tones": "loose"}, "chord_tones="), ({"density": "loud"}, "density="), ({"density": 0}, "density="),
                         ({"bpm": -3}, "bpm="), ({"bpm": "fast"}, "bpm must be a number"), ({"time_signature": "3-4"}, "time_sig")]:
        with pytest.raises(UserError, match=message):
            GenerateOptions.from_mapping(bad)
    vocab = REMITokenizer().vocab
    for bad, message in [({"time_signature": "7/1"}, "no TimeSig_7/1"), ({"bpm": 1000}, "tempo range")]:
        with pytest.raises(UserError, match=message):
            ControlConfig(**bad).check(vocab)
    no_chords = REMITokenizer({"chords": False}).vocab
    with pytest.raises(UserError, match="no Chord tokens"):
        ControlConfig(chords="Am").check(no_chords)


# --- the chart in the token stream ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["only", "free"])
def test_chart_imposed_unconditional_batch(model, tokenizer: REMITokenizer, mode: str) -> None:
    controls = ControlConfig(chords="Am F | C G7 | Dm", chord_tones=mode)
    results = run(model, tokenizer, controls, num_samples=3, seed=1)
    assert len({tuple(r.ids) for r in results}) == 3
    for result in results:
        assert_chart_imposed(tokenizer, result, controls.chart, 8)
        assert result.controls["chart"] == [["A:min", "F:maj"], ["C:maj", "G:dom7"], ["D:min"]]
        assert result.controls["bars_with_chart"] == 8


def test_chart_imposed_after_prompt(model, tokenizer: REMITokenizer, pop909_dir: Path) -> None:
    prompt = load_prompt(pop909_dir / "003.mid", tokenizer, prompt_bars=2, time_signature="index")
    assert prompt.time_signature == (2, 4)
    controls = ControlConfig(chords="Bb Gm Eb F")
    results = run(model, tokenizer, controls, prompt=prompt, num_samples=3, seed=2)
    for result in results:
        assert result.ids[:result.prompt_length] == prompt.ids
        assert_chart_imposed(tokenizer, result, controls.chart, 8)
        first = continuation_bars(tokenizer, result.ids, result.prompt_length)[0]
        assert first["chords"][0] == (0, parse_chord("Bb"))  # the chart starts at the first continuation bar


def test_chart_repeats_over_a_long_piece(model, tokenizer: REMITokenizer) -> None:
    controls = ControlConfig(chords="C G Am F", time_signature="2/4", density="low")
    for result in run(model, tokenizer, controls, num_samples=2, seed=3, bars=None, tokens=2500):
        assert result.stop_reason == "tokens" and result.n_bars >= 9  # the 4-bar chart came round a third time
        assert_chart_imposed(tokenizer, result, controls.chart, None)


def chord_segments(tokenizer: REMITokenizer, ids: list[int], prompt_length: int) -> list[dict]:
    """The continuation's chord segments: from each Chord token to the next (the last to the piece's end), with
    the pitched notes that start in it as (onset, duration, pitch) in absolute grid steps."""
    grammar, vocab = tokenizer.grammar, tokenizer.vocab
    state, segments, end = grammar.initial_state(), [], 0
    for i, token in enumerate(ids):
        state = grammar.advance(state, token)
        if state.phase == Phase.BAR:
            end = state.bar_start + state.bar_length
        if i < prompt_length:
            continue
        if state.phase == Phase.TIME_SIG:
            end = state.bar_start + state.bar_length
        elif state.phase == Phase.CHORD:
            if segments:
                segments[-1]["end"] = state.step
            segments.append({"start": state.step, "chord": int(vocab.values[token]), "notes": []})
        elif state.phase == Phase.DURATION and segments and state.program != DRUM_PROGRAM:
            segments[-1]["notes"].append((state.step, int(vocab.values[token]), state.pitch))
    if segments:
        segments[-1]["end"] = end
    return segments


@pytest.mark.parametrize("mode", ["only", "prefer"])
def test_chord_tones(model, tokenizer: REMITokenizer, mode: str) -> None:
    """only: root first, then the rest of the chord, then chord tones; every segment spells its whole chord;
    prefer: root first; both: no note sounds past the next chord change."""
    controls = ControlConfig(chords="Am F | C G7 | Bdim Esus4", chord_tones=mode)
    results = run(model, tokenizer, controls, num_samples=3, seed=9, bars=6)
    spelled = 0
    for result in results:
        assert_chart_imposed(tokenizer, result, controls.chart, 6)
        segments = chord_segments(tokenizer, result.ids, result.prompt_length)
        for seg, following in zip(segments, segments[1:] + [None]):
            tones = chord_pitch_classes(seg["chord"])
            if not seg["notes"]:
                assert mode == "prefer"
                continue
            pcs = [p % 12 for _, _, p in seg["notes"]]
            assert pcs[0] == seg["chord"] // 8  # the root first
            if mode == "only":
                assert set(pcs) == tones  # all of the chord, nothing else
                first_complete = next(i for i in range(len(pcs)) if set(pcs[:i + 1]) == tones)
                assert first_complete == len(tones) - 1  # the root, then each missing tone once
                spelled += 1
            if following is not None and following["chord"] != seg["chord"]:
                assert all(onset + duration <= following["start"] for onset, duration, _ in seg["notes"])
    if mode == "only":
        assert spelled == sum(len(chord_segments(tokenizer, r.ids, r.prompt_length)) for r in results)


# --- tempo, metre, density, key ------------------------------------------------------------------------------------
def test_bpm_forces_one_tempo(model, tokenizer: REMITokenizer, pop909_dir: Path) -> None:
    bins = Bins(tokenizer.config)
    target = bins.tempo_bin(80)
    prompt = load_prompt(pop909_dir / "003.mid", tokenizer, prompt_bars=2, time_signature="index")
    for given in (None, prompt):
        for result in run(model, tokenizer, ControlConfig(bpm=80), prompt=given, num_samples=2, seed=4, bars=4):
            bars = continuation_bars(tokenizer, result.ids, result.prompt_length)
            tempos = [t for bar in bars for t in bar["tempos"]]
            assert tempos == [(0, target)] and bars[0]["tempos"] == [(0, target)]
            cont = result.ids[result.prompt_length:]
            first_position = next(i for i, t in enumerate(cont) if tokenizer.vocab.type_of(t) == TokenType.POSITION)
            assert tokenizer.vocab.tokens[cont[first_position + 1]] == f"Tempo_{target}"
            assert result.controls["tempo_bpm"] == bins.tempo_of_bin[target] and result.controls["forced_tempo"] == 1
            midi, report = tokenizer.decode_with_report(result.ids)
            assert report.skipped == 0
            assert midi.tempo_changes[-1].tempo == pytest.approx(bins.tempo_of_bin[target], rel=1e-4)


def test_time_signature_gives_12_step_bars(model, tokenizer: REMITokenizer, pop909_dir: Path) -> None:
    prompt = load_prompt(pop909_dir / "003.mid", tokenizer, prompt_bars=2, time_signature="index")
    controls = ControlConfig(time_signature="3/4", chords="Am F")
    for given in (None, prompt):
        for result in run(model, tokenizer, controls, prompt=given, num_samples=2, seed=5, bars=6):
            bars = continuation_bars(tokenizer, result.ids, result.prompt_length)
            assert len(bars) == 6 and all(b["state"].bar_length == 12 and b["state"].metre == (3, 4) for b in bars)
            ts_id = tokenizer.vocab.time_signature_id(3, 4) - tokenizer.vocab.ranges[TokenType.TIME_SIG].start
            assert [b["timesigs"] for b in bars] == [[ts_id]] + [[]] * 5  # once, at the first continuation bar
            assert_chart_imposed(tokenizer, result, controls.chart, 6)  # one chord per 3/4 bar, at position 0
            score, report = tokenizer.decode_to_score(result.ids)
            assert report.skipped == 0 and [b.length for b in score.bars[-6:]] == [12] * 6


def test_density_moves_notes_per_bar(balanced_model, tokenizer: REMITokenizer) -> None:
    """Same seeds, same model: high density writes more notes per bar than medium, medium more than low."""
    per_bar = {}
    for density in ("low", "medium", "high"):
        notes = bars = 0
        for seed in range(3):
            for result in run(balanced_model, tokenizer, ControlConfig(density=density), num_samples=4, seed=seed,
                              bars=4):
                assert tokenizer.decode_with_report(result.ids)[1].skipped == 0
                cont = result.ids[result.prompt_length:]
                notes += sum(tokenizer.vocab.type_of(t) == TokenType.DURATION for t in cont)
                bars += result.n_bars
        per_bar[density] = notes / bars
    assert per_bar["high"] > 1.5 * per_bar["low"] and per_bar["low"] < per_bar["medium"] < per_bar["high"], per_bar


def test_key_constrains_pitch_classes(model, tokenizer: REMITokenizer) -> None:
    controls = ControlConfig(key="Am", chords="Am E")  # E major's G# is allowed while E is the chart's chord
    _, scale = parse_key("Am")
    for result in run(model, tokenizer, controls, num_samples=2, seed=6, bars=4):
        assert_chart_imposed(tokenizer, result, controls.chart, 4)
        chord, seen, state, drums = None, set(), tokenizer.grammar.initial_state(), 0
        for token in result.ids:
            state = tokenizer.grammar.advance(state, token)
            kind, value = tokenizer.vocab.type_of(token), int(tokenizer.vocab.values[token])
            if kind == TokenType.CHORD:
                chord = value
            elif kind == TokenType.PITCH and state.program == DRUM_PROGRAM:
                drums += 1  # drums are not constrained
            elif kind == TokenType.PITCH:
                assert value % 12 in scale | chord_pitch_classes(chord), (value, chord_name(chord))
                seen.add(value % 12)
        assert 8 in seen and len(seen) >= 5  # G# under E, and the scale


def test_controls_with_guards_never_empty_the_mask(model, tokenizer: REMITokenizer) -> None:
    """All controls at once, with tight guards: every piece decodes and the chart still holds."""
    controls = ControlConfig(chords="Dm7 G7 | Cmaj7", bpm=120, time_signature="4/4", density="high", key="C")
    session = GenerationSession(model, tokenizer, SamplingConfig(temperature=1.3, top_p=0.9),
                                StopConfig(bars=5, allow_eos=False, max_tokens=8000), 7,
                                guards=GuardConfig(max_notes_per_onset=2, max_empty_bars=1), controls=controls)
    for result in session.run(unconditional_prompt(tokenizer), 3, progress=False):
        assert_chart_imposed(tokenizer, result, controls.chart, 5)
        assert result.guards["acted"]["onset_full"] > 0


# --- the API's .json and the CLI -----------------------------------------------------------------------------------
def test_controls_recorded_in_json(checkpoint: Path, tmp_path: Path, pop909_dir: Path) -> None:
    pieces = generate(checkpoint, pop909_dir / "003.mid", prompt_bars=2, prompt_time_signature="index", bars=3,
                      num_samples=2, seed=8, chords="Am F | C G", bpm=140, density="low", key="C",
                      output_dir=tmp_path, progress=False, log=None, allow_eos=False, max_tokens=4000)
    for piece in pieces:
        assert piece.report.skipped == 0
        meta = json.loads(piece.files["json"].read_text())["controls"]
        assert meta["chords"] == "Am F | C G" and meta["chart"] == [["A:min", "F:maj"], ["C:maj", "G:maj"]]
        assert meta["bpm"] == 140 and meta["tempo_bpm"] == pytest.approx(Bins(REMITokenizer().config).tempo_of_bin[
            meta["tempo_bin"]]) and meta["density_factor"] == pytest.approx(1 / 3) and meta["key_name"] == "C major"
        assert meta["forced_chords"] == 6 and meta["bars_with_chart"] == 3  # 3 bars of 2/4 x 2 halves
        assert meta["time_signature"] is None and meta["forced_tempo"] == 1 and meta["chord_tones"] == "only"
    plain = generate(checkpoint, bars=1, seed=1, output_dir=tmp_path / "plain", progress=False, log=None)
    assert json.loads(plain[0].files["json"].read_text())["controls"] == {
        "chords": None, "bpm": None, "time_signature": None, "density": None, "key": None, "chord_tones": "only"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, str(REPO / "generate.py"), *args, "progress=false", "pianoroll=false"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=180)


def test_cli_chart_and_unknown_chord(checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli(f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'bad'}", "chords=Am H7 C")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and "unknown chord symbol 'H7'" in lines[0]
    assert not (tmp_path / "bad").exists()
    proc = run_cli(f"checkpoint={checkpoint}", f"output_dir={tmp_path / 'ok'}", "chords=Am F | C G", "bpm=100",
                   "time_signature=3/4", "bars=2", "seed=1", "allow_eos=false")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((tmp_path / "ok" / "sample_00.json").read_text())
    assert meta["skipped"] == 0 and meta["controls"]["chart"] == [["A:min", "F:maj"], ["C:maj", "G:maj"]]
    assert meta["controls"]["forced_chords"] == 4 and meta["controls"]["forced_time_signatures"] == 1
