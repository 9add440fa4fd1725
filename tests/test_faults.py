"""Fault injection: crashes, kills, hostile files and careless options never lose work, run code or go silent.

Every test name contains `fault`. Covered (issue 11): a preparation killed between its file replacements
(in-process crash at every replacement, and a real SIGKILL in a subprocess) leaves a cache that is the old one
or the new one, never shifted tokens; garbage tokens, an edited index.tsv and rerun bad files are caught; two
concurrent prepares do not interleave; a malicious checkpoint is refused and its payload never runs; resume
with nothing to resume, a fresh run into a used folder and a second run on a locked folder are refused (best.pt
untouched); temp files of killed saves are removed; SIGTERM exits non-zero and resumes at the same step;
options are validated up front; generate/evaluate fail before their expensive step; every CLI case gives
exactly one `error:` line and no traceback.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from musicgen.config import UserError
from musicgen.data import TokenCache, prepare_corpus
from musicgen.data.cache import CacheError
from musicgen.data.sources import list_sources
from musicgen.evaluation.music_report import generated_statistics
from musicgen.evaluation.report import EvaluateOptions, evaluate
from musicgen.generation import generate
from musicgen.inference import CHECKPOINT_FORMAT, file_sha256, load_checkpoint, resolve_device
from musicgen.model import build_model
from musicgen.tokenizer import REMITokenizer, TokenizerConfig, TokenType
from musicgen.inference.checkpoint import save_checkpoint
from musicgen.training.rng import set_rng_state
from musicgen.training.rundir import CheckpointDirLock
from musicgen.training.trainer import run_training, validate_train_config

from support import TINY, TrainedRun, compose_cfg, env, run_cli, single_error_line, tiny_train_overrides

REPO = Path(__file__).resolve().parents[1]
CORPUS_IDS = (1, 2, 3, 5)  # 001 valid, the rest train


# --------------------------------------------------------------------------------------------------------- #
# Helpers and fixtures
# --------------------------------------------------------------------------------------------------------- #
def data_cfg(root: Path, cache: Path, **extra) -> dict:
    cfg = {"name": "pop909", "root": str(root), "download": False, "time_signature": "index", "split": "pop909",
           "cache_dir": str(cache), "num_workers": 1, "max_files": None, "augment": {"transpose": 0}}
    cfg.update(extra)
    return cfg


def make_corpus(dest: Path, pop909_dir: Path, ids=CORPUS_IDS) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copy(pop909_dir / f"{i:03d}.mid", dest / f"{i:03d}.mid")
    shutil.copy(pop909_dir / "index.tsv", dest / "index.tsv")
    return dest


def reference_ids(root: Path) -> dict[tuple[str, str], list[int]]:
    """(relpath, sha1 of the bytes) -> the ids a fresh tokenization gives, for the corpus as it is now."""
    from musicgen.data.prepare import file_sha1

    tok = REMITokenizer()
    return {(s.relpath, file_sha1(s.path)): tok.encode(s.path, s.time_signature)
            for s in list_sources(data_cfg(root, root / "unused"))}


def assert_cache_matches(cache: TokenCache, references: dict[tuple[str, str], list[int]]) -> None:
    """Every song's cached ids are exactly the tokenization of the file version its manifest names."""
    for song in cache.songs:
        assert (song.relpath, song.sha1) in references, song
        assert cache.song_tokens(song).tolist() == references[(song.relpath, song.sha1)], song.relpath


def train_overrides(root: Path, cache: Path, ckpt: Path, steps: int = 4, *extra: str) -> list[str]:
    """The micro run (support.tiny_train_overrides) on the 4-file corpus, for the tests whose run is what they
    check (options refused, SIGTERM); a finished run folder to refuse, copy or resume is conftest's trained_run."""
    return tiny_train_overrides(root, cache, ckpt, steps, micro=True) + list(extra)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, pop909_dir: Path) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "pop", pop909_dir)


@pytest.fixture(scope="module")
def train_cache(corpus: Path, tmp_path_factory) -> Path:
    cache = tmp_path_factory.mktemp("train_cache")
    prepare_corpus(data_cfg(corpus, cache), {}, progress=False)
    return cache


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture()
def evil_ckpt(tmp_path: Path) -> tuple[Path, Path]:
    """A .pt whose unpickling would run `touch <marker>` (os.system) before any format check."""
    marker = tmp_path / "PAYLOAD_RAN"
    path = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": 1, "model_state": _Evil(marker)}, path)
    assert any("system" in g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path))
    return path, marker


# --------------------------------------------------------------------------------------------------------- #
# The token cache
# --------------------------------------------------------------------------------------------------------- #
class _Crash(BaseException):
    """Stands for the process dying: nothing after the failing call runs (but `finally` blocks do)."""


def _prepared_then_changed(tmp_path: Path, pop909_dir: Path):
    """A corpus prepared once, then song 002 given other bytes (and another length, so every later song's
    offset moves): (root, cache_dir, data cfg, reference ids of both versions)."""
    root = make_corpus(tmp_path / "pop", pop909_dir)
    cache_dir = tmp_path / "cache"
    cfg = data_cfg(root, cache_dir)
    refs = reference_ids(root)
    prepare_corpus(cfg, {}, progress=False)
    (root / "002.mid").write_bytes((pop909_dir / "004.mid").read_bytes())
    refs.update(reference_ids(root))
    return root, cache_dir, cfg, refs


@pytest.mark.parametrize("crash_at", [1, 2, 3])
def test_fault_prepare_crash_before_each_file_replacement_leaves_old_or_new_cache(
        tmp_path: Path, pop909_dir: Path, monkeypatch, crash_at: int) -> None:
    root, cache_dir, cfg, refs = _prepared_then_changed(tmp_path, pop909_dir)
    real_replace, calls = os.replace, []

    def replace(src, dst):
        calls.append(Path(dst).name)
        if len(calls) == crash_at:
            raise _Crash(f"killed before replacing {Path(dst).name}")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(_Crash):
        prepare_corpus(cfg, {}, progress=False)
    monkeypatch.setattr(os, "replace", real_replace)
    assert_cache_matches(TokenCache(cache_dir), refs)  # the old cache or the new one, never a mix
    again = prepare_corpus(cfg, {}, progress=False)
    assert_cache_matches(again, refs)
    assert {s.sha1 for s in again.songs} == {sha for (_, sha) in reference_ids(root)}
    assert sum(again.manifest["last_run"].values()) == len(CORPUS_IDS)


_KILL_SCRIPT = """
import json, os, signal, sys
from musicgen.data import prepare_corpus
real = os.replace
def replace(src, dst):
    if os.path.basename(str(dst)) == "manifest.json":  # the new token file is in place, the manifest not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst)
os.replace = replace
prepare_corpus(json.loads(sys.argv[1]), {}, progress=False)
"""


def test_fault_prepare_killed_by_sigkill_before_the_manifest_is_rebuilt(tmp_path: Path, pop909_dir: Path) -> None:
    """The bug: tokens.bin replaced, killed before manifest.json; the next run said "unchanged" and trained on
    shifted tokens. Now the old manifest still describes the old token file, and the next run rebuilds."""
    root, cache_dir, cfg, refs = _prepared_then_changed(tmp_path, pop909_dir)
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, json.dumps(cfg)], env=env(), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert list(cache_dir.glob(".manifest.json.tmp-*")), "the kill left its temp file behind"
    old = TokenCache(cache_dir)
    assert_cache_matches(old, refs)
    assert old.manifest["last_run"]["tokenized"] == len(CORPUS_IDS)  # still the first run's manifest
    again = prepare_corpus(cfg, {}, progress=False)
    assert again.manifest["last_run"] == {"tokenized": 1, "unchanged": len(CORPUS_IDS) - 1}
    assert_cache_matches(again, refs)
    assert not list(cache_dir.glob(".*.tmp-*")), "orphaned temp files are removed"
    assert len(list(cache_dir.glob("tokens-*.bin"))) == 1, "the replaced token file is deleted"


def test_fault_garbage_tokens_are_detected_and_rebuilt(tmp_path: Path, corpus: Path) -> None:
    cache_dir = tmp_path / "cache"
    cfg = data_cfg(corpus, cache_dir)
    cache = prepare_corpus(cfg, {}, progress=False)
    good = {s.relpath: cache.song_tokens(s).tolist() for s in cache.songs}
    token_file = cache.token_file
    original = np.fromfile(token_file, dtype=np.uint16)
    del cache
    for garbage in (np.random.default_rng(0).integers(0, 65535, original.size, dtype=np.uint16),  # ids out of range
                    np.roll(original, 7)):  # same size, every id in range: only the checksum can tell
        garbage.tofile(token_file)
        with pytest.raises(CacheError, match="damaged") as info:
            TokenCache(cache_dir)
        assert "\n" not in str(info.value) and str(cache_dir) in str(info.value)
        rebuilt = prepare_corpus(cfg, {}, progress=False)
        assert rebuilt.manifest["last_run"]["tokenized"] == len(CORPUS_IDS)
        assert {s.relpath: rebuilt.song_tokens(s).tolist() for s in rebuilt.songs} == good


def test_fault_editing_the_metre_source_retokenizes_those_songs(tmp_path: Path, pop909_dir: Path) -> None:
    root = make_corpus(tmp_path / "pop", pop909_dir)
    cfg = data_cfg(root, tmp_path / "cache")
    tok = REMITokenizer()
    first = prepare_corpus(cfg, {}, progress=False)
    lines = (root / "index.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    col, id_col = header.index("num_beats_per_measure"), header.index("song_id")
    for i, line in enumerate(lines):
        cells = line.split("\t")
        if i and cells[id_col].strip() in ("2", "002"):
            old_beats = int(cells[col])
            cells[col] = "3" if old_beats != 3 else "4"
            lines[i] = "\t".join(cells)
    (root / "index.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    second = prepare_corpus(cfg, {}, progress=False)
    assert second.manifest["last_run"] == {"tokenized": 1, "unchanged": len(CORPUS_IDS) - 1}
    song = next(s for s in second.songs if s.relpath == "002.mid")
    metre = next(s.time_signature for s in list_sources(cfg) if s.relpath == "002.mid")
    assert second.song_tokens(song).tolist() == tok.encode(root / "002.mid", metre)
    before = next(s for s in first.songs if s.relpath == "002.mid")
    assert first.song_tokens(before).tolist() != second.song_tokens(song).tolist()


def test_fault_bad_files_keep_their_reason_on_reruns(tmp_path: Path, pop909_dir: Path, oddities_dir: Path) -> None:
    root = tmp_path / "midi"
    root.mkdir()
    shutil.copy(pop909_dir / "005.mid", root / "good.mid")
    shutil.copy(oddities_dir / "jazzsoft__test-corrupt-file-missing-byte.mid", root / "truncated.mid")
    cfg = data_cfg(root, tmp_path / "cache", name="midi_folder", time_signature="file", split="hash")
    prepare_corpus(cfg, {}, progress=False)
    first = (tmp_path / "cache" / "bad_files.log").read_text()
    again = prepare_corpus(cfg, {}, progress=False)
    assert again.manifest["last_run"]["unchanged"] == 2
    assert (tmp_path / "cache" / "bad_files.log").read_text() == first
    assert "truncated.mid\t" in first and "previously unreadable" not in first


@pytest.mark.parametrize("value", [-1, 0, "abc"])
def test_fault_max_files_must_be_a_positive_count(corpus: Path, tmp_path: Path, value) -> None:
    with pytest.raises(UserError, match="data.max_files"):
        list_sources(data_cfg(corpus, tmp_path / "c", max_files=value))
    assert len(list_sources(data_cfg(corpus, tmp_path / "c", max_files=None))) == len(CORPUS_IDS)


def _prepare_in_child(cfg: dict) -> None:
    prepare_corpus(cfg, {}, progress=False)


def test_fault_two_concurrent_prepares_do_not_interleave(tmp_path: Path, corpus: Path) -> None:
    cfg = data_cfg(corpus, tmp_path / "cache")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_prepare_in_child, args=(cfg,)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    cache = TokenCache(tmp_path / "cache")
    assert_cache_matches(cache, reference_ids(corpus))
    # The second one waited for the first (the lock) and found the cache up to date.
    assert cache.manifest["last_run"] in ({"tokenized": 0, "unchanged": 4}, {"tokenized": 4, "unchanged": 0})
    assert not list((tmp_path / "cache").glob(".*.tmp-*"))


# --------------------------------------------------------------------------------------------------------- #
# Checkpoints
# --------------------------------------------------------------------------------------------------------- #
def test_fault_malicious_checkpoint_is_refused_and_its_payload_never_runs(evil_ckpt, tmp_path: Path) -> None:
    path, marker = evil_ckpt
    with pytest.raises(ValueError, match="refused") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and "system" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="refused"):
        generate(path, bars=1, progress=False, log=None, device="cpu")
    assert not marker.exists()


def test_fault_checkpoints_hold_only_safe_types(trained_run: TrainedRun) -> None:
    """What the trainer writes loads with plain torch.load(weights_only=True) (no allow-list), and so does
    the shipped model; RNG states are tensors and lists."""
    data = torch.load(trained_run.last, weights_only=True)
    assert isinstance(data["rng"][0]["numpy"]["keys"], torch.Tensor)
    assert "optimizer" in data and "positional_init" in data
    shipped = REPO / "checkpoints" / "musicgen-small.pt"
    if shipped.exists():
        assert torch.load(shipped, weights_only=True)["format"] == CHECKPOINT_FORMAT
        assert load_checkpoint(shipped).step > 0


def test_fault_older_checkpoint_with_numpy_rng_state_still_resumes(trained_run: TrainedRun, tmp_path: Path) -> None:
    data = torch.load(trained_run.last, weights_only=True)
    np.random.seed(123)
    random.seed(5)
    data["rng"][0]["numpy"] = np.random.get_state()  # the format written before: a numpy array inside
    data["rng"][0]["python"] = random.getstate()
    expected_np, expected_py = np.random.random(), random.random()
    torch.save(data, tmp_path / "old.pt")
    ckpt = load_checkpoint(tmp_path / "old.pt")
    np.random.seed(0)
    random.seed(0)
    set_rng_state(ckpt.training_state["rng"][0])
    assert np.random.random() == expected_np and random.random() == expected_py
    # Any other numpy object is still refused.
    data["model_state"] = {"w": np.zeros(3)}
    torch.save(data, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(tmp_path / "other.pt")


# --------------------------------------------------------------------------------------------------------- #
# Training runs
# --------------------------------------------------------------------------------------------------------- #
def test_fault_resume_with_nothing_to_resume_fails_clearly(corpus: Path, train_cache: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(train_overrides(corpus, train_cache, tmp_path / "typo", 2, "train.resume=true"))
    with pytest.raises(UserError, match="nothing to resume.*train.resume=auto"):
        run_training(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "typo").exists()
    # auto: there is nothing, so it starts fresh (what a job script that may run twice wants).
    auto = compose_cfg(train_overrides(corpus, train_cache, tmp_path / "auto", 2, "train.resume=auto"))
    result = run_training(auto, tmp_path / "run2", progress=False)
    assert result.step == 2 and result.stop_reason == "finished"


def test_fault_fresh_run_into_a_used_folder_is_refused_and_best_is_untouched(trained_run: TrainedRun,
                                                                              tmp_path: Path) -> None:
    used, steps = trained_run.ckpt_dir, trained_run.steps + 4
    before = {name: file_sha256(used / name) for name in ("best.pt", "last.pt")}
    fresh = compose_cfg(trained_run.overrides(used, steps))
    with pytest.raises(UserError, match="already holds best.pt, last.pt"):
        run_training(fresh, tmp_path / "run", progress=False)
    # A folder with a best.pt but no last.pt (killed before the first last.pt): auto does not start over it.
    only_best = tmp_path / "only_best"
    only_best.mkdir()
    shutil.copy(used / "best.pt", only_best / "best.pt")
    auto = compose_cfg(trained_run.overrides(only_best, steps, "train.resume=auto"))
    with pytest.raises(UserError, match="already holds best.pt"):
        run_training(auto, tmp_path / "run2", progress=False)
    assert file_sha256(only_best / "best.pt") == before["best.pt"]
    assert {name: file_sha256(used / name) for name in before} == before


def test_fault_two_runs_cannot_write_one_folder_and_orphans_are_removed(trained_run: TrainedRun,
                                                                         tmp_path: Path) -> None:
    folder = trained_run.copy_to(tmp_path / "ckpt")
    orphan = folder / ".last.pt.tmp-99999999"  # a save killed by SIGKILL (no such process)
    orphan.write_bytes(b"half a checkpoint")
    cfg = compose_cfg(trained_run.overrides(folder, trained_run.steps + 1, "train.resume=true"))
    lock = CheckpointDirLock(folder).acquire()  # another run holds the folder
    try:
        with pytest.raises(UserError, match="in use by another training run"):
            run_training(cfg, tmp_path / "run", progress=False)
    finally:
        lock.release()
    assert orphan.exists()  # nothing was touched while the other run held it
    result = run_training(cfg, tmp_path / "run", progress=False)
    assert result.step == trained_run.steps + 1 and len(result.losses) == 1  # resumed at the run's last step
    assert not orphan.exists()


@pytest.mark.parametrize("override, option", [
    ("train.ckpt_every=0", "train.ckpt_every"), ("train.val_every=0", "train.val_every"),
    ("train.max_steps=0", "train.max_steps"), ("train.batch_size=0", "train.batch_size"),
    ("train.lr=fast", "train.lr"), ("train.grad_accum=-2", "train.grad_accum"),
    ("data.max_files=-1", "data.max_files"), ("seed=abc", "seed"),
])
def test_fault_numeric_training_options_are_validated_up_front(tmp_path: Path, override: str, option: str) -> None:
    cfg = compose_cfg(train_overrides(tmp_path / "no-data", tmp_path / "c", tmp_path / "ckpt", 4, override))
    with pytest.raises(UserError, match=option.replace(".", r"\.")):
        validate_train_config(cfg)
    with pytest.raises(UserError, match=option.replace(".", r"\.")):
        run_training(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "c").exists()


def test_fault_sigterm_exits_nonzero_and_resumes_at_the_same_step(corpus: Path, train_cache: Path,
                                                                    tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    args = [str(REPO / "train.py"), *train_overrides(corpus, train_cache, ckpt, 100000),
            "train.val_every=100000", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if "stopped by SIGTERM" in line)
    step = int(line.split("saved at step ")[1].split(",")[0])
    assert "resume with train.resume=true" in line
    assert load_checkpoint(ckpt / "last.pt").step == step
    resumed = compose_cfg(train_overrides(corpus, train_cache, ckpt, step + 1, "train.resume=true",
                                          "train.val_every=100000"))
    result = run_training(resumed, tmp_path / "run2", progress=False)
    assert result.step == step + 1 and len(result.losses) == 1


# --------------------------------------------------------------------------------------------------------- #
# generate / evaluate fail before their expensive step
# --------------------------------------------------------------------------------------------------------- #
def _fail(*_args, **_kwargs):
    raise AssertionError("reached a step that should not run")


def test_fault_generate_checks_output_dir_before_loading_or_sampling(tiny_checkpoint: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    import musicgen.generation.api as api

    monkeypatch.setattr(api, "load_model", _fail)
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UserError, match="output_dir"):
        generate(tiny_checkpoint, tokens=3000, output_dir=str(tmp_path / "file" / "out"), progress=False, log=None)
    with pytest.raises(UserError, match="device=cuda:999"):
        generate(tiny_checkpoint, device="cuda:999", progress=False, log=None)


def test_fault_generate_refuses_what_it_cannot_do_before_sampling(tiny_checkpoint: Path, tmp_path: Path,
                                                                  pop909_dir: Path, monkeypatch) -> None:
    import musicgen.generation.api as api

    monkeypatch.setattr(api, "GenerationSession", _fail)
    with pytest.raises(UserError, match="prompt_time_signature=7/1"):
        generate(tiny_checkpoint, pop909_dir / "001.mid", prompt_time_signature="7/1", progress=False, log=None,
                 device="cpu")
    with pytest.raises(UserError, match=r"num_samples=10000000: .* use num_samples <= \d+"):
        generate(tiny_checkpoint, num_samples=10_000_000, progress=False, log=None, device="cpu")
    with pytest.raises(UserError, match="seed must be an integer"):
        generate(tiny_checkpoint, seed="abc")


def test_fault_a_piece_without_notes_is_warned_about_and_marked(tmp_path: Path) -> None:
    """A model that never starts a note (as greedy decoding of the shipped model did, looping on Position and
    Chord tokens) writes a MIDI without notes: the run says so and the piece's json is marked."""
    tok = REMITokenizer()
    vocab = tok.vocab
    torch.manual_seed(0)
    model = build_model(TINY, len(vocab))
    pref = torch.zeros(len(vocab))
    for kind, value in ((TokenType.VELOCITY, -40.0), (TokenType.EOS, -40.0), (TokenType.BAR, 4.0)):
        span = vocab.ranges[kind]
        pref[span.start:span.stop] = value
    with torch.no_grad():
        model.ln_f.weight.zero_()
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 1.0
        model.embed.weight[:, 0] = pref
    path = tmp_path / "silent.pt"
    save_checkpoint(path, model_config=model.config, model_state=model.state_dict(), vocab=vocab,
                    config={"model": TINY}, step=0, best_val_nll=None, train_seq_len=None)
    logged: list[str] = []
    pieces = generate(path, bars=3, temperature=0, seed=1, max_empty_bars=0, output_dir=str(tmp_path / "out"),
                      progress=False, log=logged.append, device="cpu")
    assert pieces[0].n_notes == 0
    meta = json.loads((tmp_path / "out" / "sample_00.json").read_text())
    assert meta["no_notes"] is True and meta["n_notes"] == 0 and "no notes" in meta["warnings"][0]
    assert any(line.startswith("warning: sample_00: the continuation has no notes") for line in logged)


def test_fault_evaluate_reads_generated_first_and_skips_unreadable_files(tiny_checkpoint: Path, tmp_path: Path,
                                                                         pop909_dir: Path, monkeypatch) -> None:
    import musicgen.evaluation.report as report

    monkeypatch.setattr(report, "load_model", _fail)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no .mid/.midi files"):
        evaluate(EvaluateOptions(checkpoint=str(tiny_checkpoint), generated=str(tmp_path / "empty"), device="cpu",
                                 output_dir=str(tmp_path / "out"), progress=False), log=None)
    gen = tmp_path / "gen"
    gen.mkdir()
    shutil.copy(pop909_dir / "005.mid", gen / "good.mid")
    (gen / "broken.mid").write_bytes(b"MThd this is not MIDI")
    skipped: list[tuple[str, str]] = []
    rows, names = generated_statistics(gen, skipped)
    assert names == ["good.mid"] and len(rows) == 1 and [s[0] for s in skipped] == ["broken.mid"]
    (gen / "good.mid").unlink()
    with pytest.raises(UserError, match="none of its 1 MIDI file"):
        generated_statistics(gen)


def test_fault_checkpoint_config_never_steers_where_evaluate_writes(tiny_checkpoint: Path, corpus: Path,
                                                                     tmp_path: Path, monkeypatch) -> None:
    """A checkpoint whose stored data.cache_dir names another folder (here: a cache of another vocabulary):
    evaluate never writes there; it builds its own cache under cache/ in the working directory. Given as
    data.cache_dir by the user, a cache of another vocabulary is refused rather than overwritten."""
    victim = tmp_path / "victim"
    prepare_corpus(data_cfg(corpus, victim), TokenizerConfig(chords=False), progress=False)
    snapshot = {p.name: p.read_bytes() for p in victim.iterdir() if p.is_file()}
    ckpt = load_checkpoint(tiny_checkpoint)
    steered = tmp_path / "steered.pt"
    save_checkpoint(steered, model_config=ckpt.model_config, model_state=ckpt.model_state, vocab=ckpt.vocab,
                    config={**ckpt.config, "tokenizer": {}, "data": data_cfg(corpus, victim)}, step=0,
                    best_val_nll=None, train_seq_len=32)
    monkeypatch.chdir(tmp_path)
    result = evaluate(EvaluateOptions(checkpoint=str(steered), split="valid", max_files=1, length_factor=1,
                                      batch_size=1, device="cpu", output_dir=str(tmp_path / "out"), progress=False),
                      log=None)
    assert math.isfinite(result.likelihood.model.mean)
    assert {p.name: p.read_bytes() for p in victim.iterdir() if p.is_file()} == snapshot
    built = list((tmp_path / "cache").glob("eval-pop909-*/manifest.json"))
    assert len(built) == 1
    with pytest.raises(UserError, match="another vocabulary"):
        evaluate(EvaluateOptions(checkpoint=str(steered), data_cache_dir=str(victim), split="valid", max_files=1,
                                 length_factor=1, device="cpu", output_dir=str(tmp_path / "out2"), progress=False),
                 log=None)
    assert {p.name: p.read_bytes() for p in victim.iterdir() if p.is_file()} == snapshot


def test_fault_one_device_resolver() -> None:
    with pytest.raises(UserError, match="device=cuda:999"):
        resolve_device("cuda:999")
    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu please")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda") and resolve_device("cpu").type == "cpu"


# --------------------------------------------------------------------------------------------------------- #
# Every CLI case: exactly one `error:` line, no traceback
# --------------------------------------------------------------------------------------------------------- #
CLI_CASES = [
    # train.py
    ("train", ["train.ckpt_every=0"], "train.ckpt_every"),
    ("train", ["data.max_files=-1"], "data.max_files"),
    ("train", ["train.resume=true", "train.ckpt_dir={tmp}/typo"], "nothing to resume"),
    ("train", ["train.ckpt_dir={used}"], "already holds"),
    ("train", ["device=cuda:999"], "device=cuda:999"),
    # generate.py
    ("generate", ["checkpoint={tiny}", "device=cuda:999"], "device=cuda:999"),
    ("generate", ["checkpoint={tiny}", "seed=abc"], "seed must be an integer"),
    ("generate", ["checkpoint={tiny}", "prompt={pop}/001.mid", "prompt_time_signature=7/1"],
     "prompt_time_signature=7/1"),
    ("generate", ["checkpoint={tiny}", "output_dir={tmp}/file/out", "tokens=3000"], "output_dir"),
    ("generate", ["checkpoint={tiny}", "num_samples=10000000"], "num_samples=10000000"),
    ("generate", ["checkpoint={evil}"], "refused"),
    # evaluate.py
    ("evaluate", ["checkpoint={tiny}", "device=cuda:999"], "device=cuda:999"),
    ("evaluate", ["checkpoint={evil}"], "refused"),
    ("evaluate", ["checkpoint={tiny}", "generated={tmp}/empty"], "no .mid/.midi files"),
    ("evaluate", ["checkpoint={tiny}", "output_dir={tmp}/file/out"], "output_dir"),
    # python -m musicgen.tokenizer check
    ("check", ["{tmp}/empty"], "no MIDI files"),
    ("check", ["{pop}/001.mid", "--out", "{tmp}/file/out"], "--out"),
]


@pytest.mark.parametrize("tool, args, message", CLI_CASES, ids=[f"{t}-{a[-1]}" for t, a, _ in CLI_CASES])
def test_fault_cli_cases_give_one_error_line(tool: str, args: list[str], message: str, tmp_path: Path,
                                             tiny_checkpoint: Path, evil_ckpt, trained_run: TrainedRun,
                                             pop909_dir: Path) -> None:
    evil, marker = evil_ckpt
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("not a folder")
    used = trained_run.ckpt_dir
    before = {p.name: file_sha256(p) for p in used.glob("*.pt")}
    values = {"tmp": tmp_path, "tiny": tiny_checkpoint, "evil": evil, "used": used, "pop": pop909_dir}
    args = [a.format(**values) for a in args]
    if tool == "check":
        cmd = ["-m", "musicgen.tokenizer", "check", *args]
    else:
        cmd = [str(REPO / f"{tool}.py"), *args, "progress=false" if tool != "train" else "logger=none"]
        if tool == "train":
            cmd.append(f"hydra.run.dir={tmp_path / 'run'}")
    line = single_error_line(run_cli(cmd, tmp_path))
    assert message in line, line
    assert not marker.exists()
    assert {p.name: file_sha256(p) for p in used.glob("*.pt")} == before
    assert not (tmp_path / "file").is_dir()
