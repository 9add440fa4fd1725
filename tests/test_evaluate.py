"""evaluate.py and musicgen.evaluation.report on a tiny model trained for 10 steps on 20 POP909 files (conftest's
`trained_run`)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from musicgen.config import CONF_DIR, UserError
from musicgen.evaluation.report import EvaluateOptions, evaluate
from musicgen.evaluation.tables import nll_by_position_line
from musicgen.evaluation.unigram import unigram_log_probs
from musicgen.evaluation.windows import WindowDecoder
from support import TrainedRun

REPO = Path(__file__).resolve().parents[1]


def test_evaluate_likelihood_music_and_drift(trained_run: TrainedRun, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = evaluate(EvaluateOptions(checkpoint=str(trained_run.last), max_files=3, length_factor=2, batch_size=2,
                                      device="cpu", drift_tokens=150, drift_samples=1, drift_window=64,
                                      output_dir=str(out), progress=False), log=None)
    lik = result.likelihood
    assert list(lik.buckets) == ["[0,64)", "[64,128)"]
    assert list(lik.all_buckets()) == ["[0,64)", "[32,64)", "[64,128)"]
    assert all(math.isfinite(v) and v > 0 for v in lik.all_buckets().values())
    assert lik.unigram is not None and math.isfinite(lik.unigram.mean) and lik.unigram.mean > 0
    assert re.fullmatch(r"nll_by_position: \[0,64\): \d+\.\d+  \[64,128\): \d+\.\d+", result.last_line)
    for name in ("nll.json", "nll_by_position.png", "drift.json", "drift.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "nll.json").read_text())
    assert saved["train_len"] == 64 and saved["crop_len"] == 128
    assert saved["by_position_nats"]["[0,64)"] == pytest.approx(lik.buckets["[0,64)"])
    assert saved["nll_bits"] == pytest.approx(saved["nll_nats"] / math.log(2))
    # Drift: windows of 64 tokens over ~150 generated tokens; constrained sampling never skips a token.
    windows = result.drift.samples[0]
    assert len(windows) >= 2 and all(w["skipped_share"] == 0 for w in windows)
    # Music statistics: the drift pieces (with generate.py's .json beside them) against the train split.
    music = evaluate(EvaluateOptions(checkpoint=str(trained_run.last), split="train", max_files=2, length_factor=1,
                                     device="cpu", generated=str(out / "drift"), output_dir=str(tmp_path / "m"),
                                     progress=False), log=None).music
    assert music is not None and len(music["generated"]) == 1 and len(music["reference"]) == 2
    assert music["generated"][0]["skipped_share"] == 0.0  # read from the .json generate wrote
    assert (tmp_path / "m" / "music_statistics.json").exists()


def test_unigram_is_a_distribution_without_pad(trained_run: TrainedRun) -> None:
    from musicgen.data import TokenCache
    from musicgen.inference import load_checkpoint

    cache = TokenCache(load_checkpoint(trained_run.last).config["data"]["cache_dir"])
    logp = unigram_log_probs(cache)
    assert logp[cache.vocab.pad_id] == -np.inf
    assert np.exp(logp).sum() == pytest.approx(1.0)
    assert np.isfinite(np.delete(logp, cache.vocab.pad_id)).all()


def test_window_decoder_keeps_metre_and_counts_no_false_skips(trained_run: TrainedRun) -> None:
    """Windows cut mid-bar of a grammatical song: nothing counts as skipped, and a later window keeps the
    song's metre (POP909 is mostly 2/4, stated once after the first Bar)."""
    from musicgen.data import TokenCache
    from musicgen.evaluation.drift import windowed_statistics
    from musicgen.tokenizer import REMITokenizer, TokenType
    from musicgen.inference import load_checkpoint

    cache = TokenCache(load_checkpoint(trained_run.last).config["data"]["cache_dir"])
    tok, vocab = REMITokenizer(cache.vocab.config), cache.vocab
    ids = cache.song_tokens(cache.songs[0]).tolist()[:700]
    rows = windowed_statistics(ids, WindowDecoder(tok, ids), window=250)
    assert len(rows) == 3 and all(r["skipped_share"] == 0 for r in rows)
    assert all(r["n_notes"] > 0 for r in rows)
    metres = [vocab.time_signatures[int(vocab.values[t])] for t in ids if vocab.type_of(t) == TokenType.TIME_SIG]
    assert metres and tuple(metres[0]) != (4, 4)
    decoder = WindowDecoder(tok, ids)
    decoder(ids[:250])
    midi, skipped = decoder(ids[250:500])
    assert skipped == 0
    assert [(t.numerator, t.denominator) for t in midi.time_signature_changes][:1] == [tuple(metres[0])]
    with pytest.raises(ValueError, match="in order"):
        decoder(ids[:10])


def test_options_reject_bad_values() -> None:
    with pytest.raises(UserError, match="split"):
        EvaluateOptions(split="dev")
    with pytest.raises(UserError, match="unknown evaluate option"):
        EvaluateOptions.from_mapping({"no_such": 1})
    with pytest.raises(UserError, match="data.root"):
        EvaluateOptions.from_mapping({"data": {"max_files": 3}})
    assert nll_by_position_line({"[0,8)": 1.0, "[8,16)": 2.5}) == "nll_by_position: [0,8): 1.000  [8,16): 2.500"


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "evaluate.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_last_line_is_machine_readable(trained_run: TrainedRun, tmp_path: Path) -> None:
    proc = _run_cli([f"checkpoint={trained_run.last}", "max_files=3", "length_factor=2", "device=cpu", "progress=false",
                     f"output_dir={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.match(r"^nll_by_position: \[0,64\): \d+\.\d+  \[64,128\): \d+\.\d+$", last), proc.stdout
    assert "unigram" in proc.stdout and (tmp_path / "out" / "nll.json").exists()


def test_cli_bad_input_gives_one_line_errors(trained_run: TrainedRun, tmp_path: Path) -> None:
    proc = _run_cli([f"checkpoint={tmp_path / 'missing.pt'}"], tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "missing.pt" in errors[0]
    (tmp_path / "empty").mkdir()
    proc = _run_cli([f"checkpoint={trained_run.last}", f"data.root={tmp_path / 'empty'}",
                     f"data.cache_dir={tmp_path / 'c'}"], tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")], proc.stderr


def test_evaluate_yaml_states_the_options_defaults() -> None:
    """conf/evaluate.yaml (what Hydra needs) and EvaluateOptions (the source) never drift apart."""
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "evaluate.yaml"))
    conf.pop("defaults")
    assert EvaluateOptions.from_mapping(conf) == EvaluateOptions()
