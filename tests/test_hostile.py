"""Hostile inputs, round two (issue 20): options that were silently wrong, tiny files that cost gigabytes, web
pages that drove the studio, loose ends that ended in tracebacks.

Every test name contains `hostile` or `fault`. Memory-bound cases run in a subprocess under
`resource.setrlimit(RLIMIT_AS)`, so a regression fails with a MemoryError instead of taking the machine down.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.config import UserError, check_bool
from musicgen.evaluation.report import EvaluateOptions
from musicgen.generation import GenerateOptions
from musicgen.model import build_model
from musicgen.tokenizer import REMITokenizer, TokenizerConfig
from musicgen.training.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "tiny", "n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 64, "dropout": 0.0,
        "attention": {"n_features": 16}, "pe": {"realizations": 16, "sines": 3}}


def env() -> dict[str, str]:
    import os

    return dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def run_cli(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def single_error_line(proc: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one stderr line, `error: ...`, and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A random tiny model (no data config: nothing here trains or evaluates on a corpus)."""
    tok = REMITokenizer()
    torch.manual_seed(0)
    model = build_model(TINY, len(tok.vocab))
    path = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    save_checkpoint(path, model_config=model.config, model_state=model.state_dict(), vocab=tok.vocab,
                    config={"model": TINY, "tokenizer": {}}, step=0, best_val_nll=None, train_seq_len=32)
    return path


# --------------------------------------------------------------------------------------------------------- #
# (1) yes/no options given as words
# --------------------------------------------------------------------------------------------------------- #
@pytest.mark.parametrize("word, meaning", [("no", False), ("off", False), ("false", False), ("0", False),
                                           ("No", False), ("yes", True), ("on", True), ("TRUE", True),
                                           ("1", True), (True, True), (False, False), (0, False)])
def test_hostile_yes_no_words_mean_what_they_say(word, meaning) -> None:
    assert check_bool("x", word) is meaning
    options = GenerateOptions(include_prompt=word, allow_eos=word, pianoroll=word, no_repeated_pitch=word,
                              progress=word)
    assert (options.include_prompt, options.allow_eos, options.pianoroll, options.no_repeated_pitch,
            options.progress) == (meaning,) * 5
    assert options.stop.allow_eos is meaning and options.guards.no_repeated_pitch is meaning
    assert EvaluateOptions(progress=word).progress is meaning
    assert TokenizerConfig(chords=word, programs=word).chords is meaning


@pytest.mark.parametrize("option", ["include_prompt", "allow_eos", "pianoroll", "no_repeated_pitch", "progress"])
@pytest.mark.parametrize("word", ["maybe", "", "2", 2, None])
def test_hostile_yes_no_options_refuse_anything_else(option: str, word) -> None:
    with pytest.raises(UserError, match=f"^{option} must be true or false"):
        GenerateOptions(**{option: word})
    with pytest.raises(ValueError, match="tokenizer.chords must be true or false"):
        TokenizerConfig(chords=word)


@pytest.mark.parametrize("tool, args, option", [
    ("generate", ["allow_eos=maybe"], "allow_eos"), ("generate", ["include_prompt=perhaps"], "include_prompt"),
    ("generate", ["pianoroll=sometimes"], "pianoroll"), ("evaluate", ["progress=kinda"], "progress"),
])
def test_hostile_yes_no_words_on_the_command_line(tool: str, args: list[str], option: str, tiny_ckpt: Path,
                                                  tmp_path: Path) -> None:
    proc = run_cli([str(REPO / f"{tool}.py"), f"checkpoint={tiny_ckpt}", f"output_dir={tmp_path / 'out'}", *args],
                   tmp_path)
    assert option in single_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_hostile_allow_eos_no_really_never_ends(tiny_ckpt: Path, tmp_path: Path) -> None:
    """`allow_eos=no` on the command line: every sample runs to its token limit and the .json records false."""
    import json

    proc = run_cli([str(REPO / "generate.py"), f"checkpoint={tiny_ckpt}", f"output_dir={tmp_path}", "allow_eos=no",
                    "include_prompt=off", "pianoroll=off", "bars=null", "tokens=40", "seed=3", "device=cpu",
                    "progress=no"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "sample_00.json").read_text())
    assert meta["stop"]["allow_eos"] is False and meta["include_prompt"] is False
    assert meta["stop_reason"] == "tokens"
    assert not list(tmp_path.glob("*.png"))
