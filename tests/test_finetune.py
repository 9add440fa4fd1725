"""Fine-tuning on a folder of one's own MIDI (musicgen/finetune, docs/finetune.md): the command end to end on a tiny
model, decoding bounds from the corpus (explicit option > checkpoint statistics > GuardConfig default), the shipped
model decoding exactly as before, and the copy check on an overfit tiny model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import miditoolkit
import numpy as np
import pytest
import torch

from support import REPO, compose_cfg, run_cli, tiny_finetune_overrides

from musicgen.generation import GenerateOptions, generate_with
from musicgen.generation.guards import CORPUS_OPTIONS, GuardConfig, resolve_guard_values
from musicgen.finetune.cli import compose_config
from musicgen.inference import load_checkpoint

SHIPPED = REPO / "checkpoints" / "musicgen-small.pt"
TODAY = {"max_notes_per_onset": 15, "max_empty_bars": 4, "min_bars": 8, "min_notes_per_bar": 6.0,
         "max_notes_per_bar": 40.0, "min_mean_pitch": 46.0, "max_mean_pitch": 78.0}


def _tune(path: Path, seed: int, bars: int = 12, numerator: int = 3, program: int = 0, chords: bool = False) -> None:
    """A made-up tune of `bars` bars in numerator/4: quarter notes, each bar different (a fixed random walk)."""
    rng = np.random.default_rng(seed)
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.time_signature_changes = [miditoolkit.TimeSignature(numerator, 4, 0)]
    midi.tempo_changes = [miditoolkit.TempoChange(100, 0)]
    inst = miditoolkit.Instrument(program=program)
    pitch, t = 60 + int(rng.integers(-5, 5)), 0
    for _ in range(bars * numerator):
        pitch = int(np.clip(pitch + rng.integers(-4, 5), 50, 80))
        inst.notes.append(miditoolkit.Note(90, pitch, t, t + 460))
        if chords:
            inst.notes.append(miditoolkit.Note(70, pitch - 12, t, t + 460))
        t += 480
    midi.instruments = [inst]
    midi.dump(str(path))


def _arpeggios(path: Path, bars: int = 24) -> None:
    """Bar k: the arpeggio 48+k, 52+k, 55+k, 60+k in quarter notes (every bar different, each one following
    from the one before: a tiny model learns it by heart in a few hundred steps)."""
    midi = miditoolkit.MidiFile(ticks_per_beat=480)
    midi.time_signature_changes = [miditoolkit.TimeSignature(4, 4, 0)]
    midi.tempo_changes = [miditoolkit.TempoChange(100, 0)]
    inst = miditoolkit.Instrument(program=0)
    for k in range(bars):
        for beat, interval in enumerate((0, 4, 7, 12)):
            start = (4 * k + beat) * 480
            inst.notes.append(miditoolkit.Note(90, 48 + k + interval, start, start + 460))
    midi.instruments = [inst]
    midi.dump(str(path))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("my_midis")
    for i in range(6):
        _tune(root / f"tune_{i}.mid", i, program=40 if i % 2 else 0)
    (root / "broken.mid").write_bytes(b"not a midi file")
    return root


# --------------------------------------------------------------------------------------------------------- #
# One rule: explicit option > checkpoint's corpus statistics > GuardConfig default
# --------------------------------------------------------------------------------------------------------- #
def test_guard_defaults_are_pop909s_and_the_rule_is_explicit_then_corpus_then_default() -> None:
    assert {k: getattr(GuardConfig(), k) for k in CORPUS_OPTIONS} == TODAY
    corpus = {"max_notes_per_onset": 3, "min_notes_per_bar": 1.5, "max_notes_per_bar": 9.0, "unknown": 1}
    resolved = resolve_guard_values({"max_notes_per_onset": 7}, corpus)
    assert resolved["max_notes_per_onset"] == 7  # explicit wins
    assert resolved["min_notes_per_bar"] == 1.5 and resolved["max_notes_per_bar"] == 9.0  # the corpus'
    assert resolved["max_mean_pitch"] == 78.0  # default
    options = GenerateOptions(max_empty_bars=2)
    assert options.max_notes_per_onset is None and options.guards.max_notes_per_onset == 15
    filled = options.with_checkpoint_defaults(corpus)
    assert (filled.max_empty_bars, filled.max_notes_per_onset, filled.min_notes_per_bar) == (2, 3, 1.5)
    assert options.with_checkpoint_defaults({}).guards == GuardConfig(max_empty_bars=2)


def test_the_shipped_model_stores_pop909s_statistics_and_decodes_under_them() -> None:
    """The shipped checkpoint carries the statistics of the corpus it was trained on (POP909's training songs,
    their beats aligned), so its decoding bounds are data, not constants in code: GuardConfig's defaults are only
    the fallback for a checkpoint that stores none, and an option the user sets still wins."""
    stored = load_checkpoint(SHIPPED).decoding_defaults
    assert set(stored) == set(CORPUS_OPTIONS)
    assert stored["min_bars"] == 8 and 5 <= stored["max_notes_per_onset"] <= 15
    assert 0 < stored["min_notes_per_bar"] < 10 < 30 < stored["max_notes_per_bar"] < 60
    assert 45 <= stored["min_mean_pitch"] < 60 < stored["max_mean_pitch"] <= 80
    resolved = GenerateOptions().with_checkpoint_defaults(stored)
    assert {k: getattr(resolved, k) for k in CORPUS_OPTIONS} == stored
    assert GenerateOptions(max_notes_per_onset=12).with_checkpoint_defaults(stored).max_notes_per_onset == 12


def test_stamping_statistics_changes_metadata_only(tmp_path: Path) -> None:
    """`stamp_corpus_statistics` replaces a checkpoint's statistics without touching its weights: stamping the
    shipped model's own statistics back writes exactly the same pieces, and other statistics are what it then
    stores."""
    from musicgen.inference.checkpoint import stamp_corpus_statistics

    own = load_checkpoint(SHIPPED)
    same = stamp_corpus_statistics(SHIPPED, tmp_path / "same.pt", {"version": 1, "decoding": own.decoding_defaults})
    runs = []
    for path in (SHIPPED, same):
        piece = generate_with(GenerateOptions(checkpoint=str(path), bars=2, seed=3, device="cpu", progress=False,
                                              pianoroll=False), log=None)[0]
        runs.append(piece.ids)
    assert runs[0] == runs[1]
    other = stamp_corpus_statistics(SHIPPED, tmp_path / "other.pt", {"version": 1, "decoding": TODAY})
    assert load_checkpoint(other).decoding_defaults == TODAY


# --------------------------------------------------------------------------------------------------------- #
# Corpus statistics
# --------------------------------------------------------------------------------------------------------- #
def test_corpus_statistics_measure_the_folder(folder: Path, tmp_path: Path) -> None:
    from musicgen.data import prepare_corpus
    from musicgen.data.stats import STATS_FILE

    cfg = compose_cfg(["data=midi_folder", f"data.root={folder}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.split=folder", "data.num_workers=1"])
    cache = prepare_corpus(cfg.data, cfg.tokenizer, progress=False)
    assert len(cache.split("valid")) == 1 and len(cache.split("train")) == 5 and not cache.split("test")
    stats = json.loads((tmp_path / "cache" / STATS_FILE).read_text())
    bounds = stats["decoding"]
    assert stats["metres"] == {"3/4": 60}
    assert bounds["max_notes_per_onset"] == 1  # one line
    assert 0 < bounds["min_notes_per_bar"] < 4 < bounds["max_notes_per_bar"] < 8  # 4 notes per four beats
    assert 45 <= bounds["min_mean_pitch"] < bounds["max_mean_pitch"] <= 85
    GuardConfig(**resolve_guard_values({}, bounds))  # a valid configuration
    from musicgen.data.stats import corpus_statistics
    from musicgen.inference.checkpoint import stamp_corpus_statistics

    fresh = corpus_statistics(cache)  # plain data: a checkpoint holding it loads (numpy scalars would be refused)
    assert fresh["decoding"] == bounds
    stamped = stamp_corpus_statistics(SHIPPED, tmp_path / "s.pt", fresh)
    assert load_checkpoint(stamped).decoding_defaults == bounds


def test_crops_state_their_metre_when_asked(folder: Path, tmp_path: Path) -> None:
    """data.crop_metre: a crop from the middle of a 3/4 tune opens with Bar TimeSig_3/4 like the tune's start."""
    from musicgen.data import RandomCrops, prepare_corpus

    cfg = compose_cfg(["data=midi_folder", f"data.root={folder}", f"data.cache_dir={tmp_path / 'cache'}",
                       "data.split=folder", "data.num_workers=1"])
    cache = prepare_corpus(cfg.data, cfg.tokenizer, progress=False)
    tokens = cache.vocab.tokens
    plain, stated = RandomCrops(cache, "train", 32, seed=1), RandomCrops(cache, "train", 32, seed=1, metre_context=True)
    heads = [[tokens[int(t)] for t in stated[i][:2]] for i in range(20)]
    assert all(h == ["Bar", "TimeSig_3/4"] or h[0] == "BOS" for h in heads) and ["Bar", "TimeSig_3/4"] in heads
    assert all(len(stated[i]) == len(plain[i]) == 33 for i in range(5))
    assert sum(tokens[int(t)].startswith("TimeSig") for i in range(20) for t in plain[i][:2]) < 20


# --------------------------------------------------------------------------------------------------------- #
# The command, end to end (a tiny model: machinery, not music)
# --------------------------------------------------------------------------------------------------------- #
TINY_RUN = tiny_finetune_overrides()  # support.FINETUNE_TRAINING: the tiny run's training options


def test_finetune_command_writes_a_checkpoint_that_generates_by_its_corpus(folder: Path, tiny_checkpoint: Path,
                                                                           tmp_path: Path) -> None:
    out = tmp_path / "mystyle"
    proc = run_cli(["-m", "musicgen.finetune", str(folder), "--out", str(out), "--from", str(tiny_checkpoint),
                    "--steps", "12", "--samples", "1", *TINY_RUN], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "about" in proc.stdout and "minutes" in proc.stdout  # the estimate, before training
    assert "skipped broken.mid" in proc.stdout
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt.decoding_defaults["max_notes_per_onset"] == 1
    summary = json.loads((out / "finetune.json").read_text())
    assert summary["train_files"] == 5 and summary["valid_files"] == 1 and summary["copy_check"]
    for explicit, expected in (({}, 1), ({"max_notes_per_onset": 5}, 5)):  # the corpus' bound, unless given
        piece = generate_with(GenerateOptions(checkpoint=str(out / "best.pt"), bars=2, seed=0, device="cpu",
                                              progress=False, pianoroll=False, **explicit), log=None)[0]
        assert piece.guards["max_notes_per_onset"] == expected
    again = run_cli(["-m", "musicgen.finetune", str(folder), "--out", str(out), "--from", str(tiny_checkpoint)],
                    cwd=tmp_path)
    assert again.returncode == 1 and "already holds" in again.stderr


def test_finetune_command_one_line_errors(tmp_path: Path) -> None:
    proc = run_cli(["-m", "musicgen.finetune", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: ") and "Traceback" not in proc.stderr


def test_early_stopping_stops_when_validation_stops_improving(folder: Path, tiny_checkpoint: Path,
                                                              tmp_path: Path) -> None:
    from musicgen.training.trainer import run_training

    cfg = compose_config(folder, tmp_path / "ck", tiny_checkpoint, 0, "cpu", [
        "data.num_workers=1", "train.max_steps=400", "train.val_every=2", "train.early_stop_patience=2",
        "train.early_stop_min_delta=10", *TINY_RUN])
    result = run_training(cfg, tmp_path, progress=False)
    assert result.stop_reason == "early_stop" and result.step == 6  # best at 2, then two validations without
    assert (tmp_path / "ck" / "best.pt").exists()


def test_time_limit_stops_a_run_on_a_busy_machine(folder: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from musicgen.training.trainer import run_training

    cfg = compose_config(folder, tmp_path / "ck", tiny_checkpoint, 0, "cpu", [
        "data.num_workers=1", "train.max_steps=400", "train.time_limit_minutes=0.0001", *TINY_RUN])
    result = run_training(cfg, tmp_path, progress=False)
    assert result.stop_reason == "time_limit" and result.step == 1 and (tmp_path / "ck" / "last.pt").exists()


# --------------------------------------------------------------------------------------------------------- #
# Copying
# --------------------------------------------------------------------------------------------------------- #
def test_copy_check_finds_a_copied_run_and_only_then_warns() -> None:
    from musicgen.finetune import CorpusBars, longest_copied_run

    bars = [frozenset({(0, 60 + i), (4, 62 + i), (8, 64 + i)}) for i in range(10)]
    corpus = CorpusBars([("a.mid", bars), ("b.mid", bars[::-1])])
    report = longest_copied_run([frozenset({(0, 1)})] + bars[2:8] + [frozenset()], corpus)
    assert (report.bars, report.file, report.piece_bar, report.file_bar) == (6, "a.mid", 1, 2)
    assert "6 bars in a row" in report.warning()
    near = [frozenset(set(b) | {(12, 30)}) for b in bars[:5]]  # 3 of 4 pairs: below 90%, no copy
    assert longest_copied_run(near, corpus).bars == 0
    assert longest_copied_run(bars[:4], corpus).warning() is None


def test_an_overfit_tiny_model_is_warned_about(tmp_path: Path) -> None:
    """A tiny model trained on one file until it knows it by heart (loss ~0.03): its greedy piece copies the
    file bar for bar (as far as its 128-token training crops reach, ~6 bars) and the check warns."""
    from musicgen.data import TokenCache
    from musicgen.finetune import CorpusBars, longest_copied_run
    from musicgen.finetune.copying import piece_bars
    from musicgen.inference.checkpoint import save_checkpoint
    from musicgen.model import build_model
    from musicgen.tokenizer import REMITokenizer
    from musicgen.training.trainer import run_training

    root = tmp_path / "two"
    root.mkdir()
    for i in range(2):
        _arpeggios(root / f"t{i}.mid")
    model_cfg = {"name": "tiny_softmax", "n_layers": 2, "d_model": 64, "n_heads": 2, "d_ff": 128, "dropout": 0.0,
                 "attention": {"kind": "softmax"}, "pe": {"kind": "ape"}}
    tokenizer = REMITokenizer()
    torch.manual_seed(0)
    model = build_model(model_cfg, len(tokenizer.vocab))
    save_checkpoint(tmp_path / "init.pt", model_config=model.config, model_state=model.state_dict(),
                    vocab=tokenizer.vocab, config={"model": model_cfg}, step=0, best_val_nll=None, train_seq_len=None)
    cfg = compose_config(root, tmp_path / "ck", tmp_path / "init.pt", 0, "cpu", [
        "data.num_workers=1", "data.augment.transpose=0", "train.max_steps=1200", "train.val_every=1200",
        "train.early_stop_patience=0", "train.seq_len=128", "train.batch_size=8", "train.lr=3e-3",
        "train.warmup_steps=10", "train.val_batches=1"])
    result = run_training(cfg, tmp_path, progress=False)
    assert result.last_loss < 0.3, result.losses[-5:]
    cache = TokenCache(tmp_path / "ck" / "cache")
    corpus = CorpusBars.from_cache(cache, "all")
    pieces = generate_with(GenerateOptions(checkpoint=str(tmp_path / "ck" / "last.pt"), bars=12, temperature=0,
                                           num_samples=1, seed=0, device="cpu", progress=False, pianoroll=False),
                           log=None)
    report = longest_copied_run(piece_bars(pieces[0].ids, cache.vocab), corpus)
    assert report.bars > 4, report
    assert report.warning() is not None and "memorised" in report.warning()


def test_finetune_preset_composes_with_train_py() -> None:
    cfg = compose_cfg(["+experiment=finetune", "data.root=somewhere"])
    assert cfg.data.split == "folder" and cfg.train.init_from.endswith("musicgen-small.pt")
    assert cfg.train.early_stop_patience >= 1
    assert shutil.which  # noqa: B018 - keep the import used on every path


def test_steps_follow_the_folder_size_within_the_preset_and_the_time_budget() -> None:
    """`choose_steps`: TARGET_EPOCHS passes over the folder's tokens, at least MIN_STEPS, at most the preset's
    train.max_steps and what `--minutes` allows at the measured seconds per step; the reason names the bound."""
    from musicgen.finetune.cli import MIN_STEPS, TARGET_EPOCHS, choose_steps

    batch = 8 * 512
    tokens = 46_034  # the chorales benchmark folder: 225 steps at 20 passes
    steps, why = choose_steps(tokens, batch, seconds_per_step=1.5, minutes=10, maximum=300)
    assert steps == int(np.ceil(TARGET_EPOCHS * tokens / batch)) and "passes" in why
    assert choose_steps(1_000, batch, 1.5, 10, 300) == (MIN_STEPS, f"{TARGET_EPOCHS:g} passes over 1,000 tokens")
    assert choose_steps(377_573, batch, 1.5, 10, 300) == (300, "train.max_steps=300")
    steps, why = choose_steps(377_573, batch, seconds_per_step=6.0, minutes=10, maximum=300)
    assert steps == 100 and "10-minute budget" in why
