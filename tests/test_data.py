"""Corpus pipeline on real POP909 files: cache, splits, incremental re-runs, bad files, crops, augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from musicgen.data import Augmenter, RandomCrops, SequentialCrops, prepare_corpus
from musicgen.data.sources import hash_split, list_sources, pop909_split
from musicgen.tokenizer import REMITokenizer, TokenType


def _data_cfg(root: Path, cache: Path, **extra) -> dict:
    cfg = {"name": "pop909", "root": str(root), "download": False, "time_signature": "index", "split": "pop909",
           "cache_dir": str(cache), "num_workers": 2, "max_files": None, "augment": {"transpose": 6}}
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory, pop909_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for i in (1, 2, 3, 20, 21, 40):
        shutil.copy(pop909_dir / f"{i:03d}.mid", root / f"{i:03d}.mid")
    shutil.copy(pop909_dir / "index.tsv", root / "index.tsv")
    return root


def test_pop909_split_rule() -> None:
    assert [pop909_split(i) for i in (20, 40, 1, 21, 2, 19)] == ["test", "test", "valid", "valid", "train", "train"]
    assert sum(pop909_split(i) == "test" for i in range(1, 910)) == 45
    assert sum(pop909_split(i) == "valid" for i in range(1, 910)) == 46
    assert hash_split("a/b.mid") == hash_split("a/b.mid")


def test_prepare_writes_cache_and_reuses_it(small_corpus: Path, tmp_path: Path, pop909_dir: Path) -> None:
    cfg = _data_cfg(small_corpus, tmp_path / "cache")
    cache = prepare_corpus(cfg, {}, progress=False)
    assert {s.relpath: s.split for s in cache.songs} == {
        "001.mid": "valid", "002.mid": "train", "003.mid": "train", "020.mid": "test", "021.mid": "valid",
        "040.mid": "test"}
    assert cache.manifest["last_run"] == {"tokenized": 6, "unchanged": 0}
    tok = REMITokenizer(cache.vocab.config)
    song = next(s for s in cache.songs if s.relpath == "002.mid")
    assert cache.song_tokens(song).tolist() == tok.encode(small_corpus / "002.mid", (2, 4))
    # Unchanged corpus: nothing is re-tokenized; a changed file is.
    again = prepare_corpus(cfg, {}, progress=False)
    assert again.manifest["last_run"] == {"tokenized": 0, "unchanged": 6}
    shutil.copy(small_corpus / "003.mid", tmp_path / "003.bak")
    # (another song's bytes: identical bytes read with the same metre would reuse that song's ids, by key)
    (small_corpus / "003.mid").write_bytes((pop909_dir / "004.mid").read_bytes())
    try:
        third = prepare_corpus(cfg, {}, progress=False)
        assert third.manifest["last_run"] == {"tokenized": 1, "unchanged": 5}
    finally:
        shutil.copy(tmp_path / "003.bak", small_corpus / "003.mid")


def test_bad_files_are_skipped_and_reported(tmp_path: Path, pop909_dir: Path, oddities_dir: Path, capsys) -> None:
    root = tmp_path / "midi"
    root.mkdir()
    shutil.copy(pop909_dir / "005.mid", root / "good.mid")
    shutil.copy(oddities_dir / "jazzsoft__test-corrupt-file-missing-byte.mid", root / "truncated.mid")
    shutil.copy(oddities_dir / "miditok__empty.mid", root / "no_notes.mid")
    cfg = _data_cfg(root, tmp_path / "cache", name="midi_folder", time_signature="file", split="hash")
    cache = prepare_corpus(cfg, {}, progress=True)
    out = capsys.readouterr().out
    assert [s.relpath for s in cache.songs] == ["good.mid"]
    log = (tmp_path / "cache" / "bad_files.log").read_text()
    assert "truncated.mid\t" in log and "no_notes.mid\tno notes" in log
    assert "2 skipped" in out and "truncated.mid" in out


def test_missing_or_empty_data_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_sources(_data_cfg(tmp_path / "nope", tmp_path / "c"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no MIDI files"):
        list_sources(_data_cfg(tmp_path / "empty", tmp_path / "c"))


def test_random_crops_start_at_bars_and_are_deterministic(small_corpus: Path, tmp_path: Path) -> None:
    cache = prepare_corpus(_data_cfg(small_corpus, tmp_path / "cache"), {}, progress=False)
    vocab = cache.vocab
    crops = RandomCrops(cache, "train", 256, Augmenter(vocab, transpose=6), seed=3)
    for i in range(20):
        item = crops[i]
        assert item.shape == (257,)
        assert int(item[0]) in (vocab.bar_id, vocab.bos_id)
        assert crops[i].tolist() == item.tolist()
    assert crops[0].tolist() != crops[1].tolist()


def test_transposition_moves_pitched_notes_and_chords_but_not_drums() -> None:
    tok = REMITokenizer()
    v = tok.vocab
    P = lambda t, i: v.id_of(t, i)  # noqa: E731
    ids = np.array([v.bos_id, v.bar_id, P(TokenType.POSITION, 0), P(TokenType.CHORD, 0),  # C:maj
                    P(TokenType.VELOCITY, 5), P(TokenType.PITCH, 60), v.duration_id(4),
                    v.program_id(128), P(TokenType.VELOCITY, 5), P(TokenType.PITCH, 36), v.duration_id(1),
                    v.bar_id, P(TokenType.POSITION, 0), P(TokenType.VELOCITY, 5), P(TokenType.PITCH, 64),
                    v.duration_id(2), v.eos_id])
    out = Augmenter(v, transpose=6).transpose_ids(ids, 2)
    names = [v.tokens[i] for i in out]
    assert names[3] == "Chord_D:maj" and names[5] == "Pitch_62" and names[9] == "Pitch_36" and names[14] == "Pitch_66"
    assert Augmenter(v).pitched_mask(ids).sum() == 2


def test_sequential_crops_cover_each_song_once(small_corpus: Path, tmp_path: Path) -> None:
    cache = prepare_corpus(_data_cfg(small_corpus, tmp_path / "cache"), {}, progress=False)
    crops = SequentialCrops(cache, "valid", 128)
    scored = sum(int((crops[i][1:] != 0).sum()) for i in range(len(crops)))
    assert scored == sum(s.length - 1 for s in cache.split("valid"))
    first = SequentialCrops(cache, "valid", 512, first_only=True)
    assert len(first) == 2 and all(int(first[i][0]) == cache.vocab.bos_id for i in range(2))
