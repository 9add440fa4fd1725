"""Shared fixtures. Real MIDI comes from MUSICGEN_SHARED_DATA (default: ../shared/data beside the repo). Shared
helpers that are not fixtures (the tiny model's config, the tiny training command line, fakes) are in support.py.

Tiny checkpoints, each made once per session (a test that needs another one changes a copy of these):
`tiny_checkpoint` (untrained, support.TINY), `note_checkpoint` (untrained, leaned towards notes) and
`trained_run` (trained for 10 steps: a finished run folder with its token cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")
# Test models are tiny: intra-op threads gain nothing and spinning threads crawl on a busy 2-core machine.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MUSICGEN_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: set MUSICGEN_SHARED_DATA to the folder holding pop909/ and midi-oddities/")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def pop909_dir() -> Path:
    return _require(SHARED_DATA / "pop909")


@pytest.fixture(scope="session")
def oddities_dir() -> Path:
    return _require(SHARED_DATA / "midi-oddities")


@pytest.fixture(scope="module")
def tokenizer():
    """The default REMI tokenizer."""
    from musicgen.tokenizer import REMITokenizer

    return REMITokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    """The untrained tiny model (support.TINY), in eval mode: machinery is under test with it, not music."""
    from musicgen.model import build_model
    from support import TINY

    torch.manual_seed(0)
    return build_model(TINY, len(tokenizer.vocab)).eval()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained tiny model saved as a checkpoint, once per test session (fast on a busy CPU)."""
    from musicgen.model import build_model
    from musicgen.tokenizer import REMITokenizer
    from musicgen.inference.checkpoint import save_checkpoint
    from support import TINY

    tokenizer = REMITokenizer()
    torch.manual_seed(0)
    model = build_model(TINY, len(tokenizer.vocab))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model_config=model.config, model_state=model.state_dict(), vocab=tokenizer.vocab,
                    config={"model": TINY}, step=0, best_val_nll=None, train_seq_len=None)
    return path


@pytest.fixture(scope="session")
def note_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The untrained tiny model leaned towards writing notes (support.lean_towards_notes), saved once per session:
    for tests that need notes in what it writes whatever the seed."""
    from musicgen.model import build_model
    from musicgen.tokenizer import REMITokenizer
    from musicgen.inference.checkpoint import save_checkpoint
    from support import TINY, lean_towards_notes

    tokenizer = REMITokenizer()
    torch.manual_seed(0)
    model = build_model(TINY, len(tokenizer.vocab))
    lean_towards_notes(model, tokenizer)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_notes.pt"
    save_checkpoint(path, model_config=model.config, model_state=model.state_dict(), vocab=tokenizer.vocab,
                    config={"model": TINY}, step=0, best_val_nll=None, train_seq_len=None)
    return path


@pytest.fixture(scope="session")
def trained_run(pop909_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The one trained tiny checkpoint of the tests (support.TrainedRun): support.tiny_train_overrides with
    TRAINED_RUN_SETTINGS, 10 steps on POP909's first 20 files (training length 64), trained once per session.
    For every test that needs "some trained tiny model" or a finished run folder; tests that damage or resume it
    work on a copy (TrainedRun.copy_to) and reuse its token cache (TrainedRun.overrides)."""
    from musicgen.training.trainer import run_training
    from support import TrainedRun, compose_cfg

    root = tmp_path_factory.mktemp("trained")
    run = TrainedRun(pop909_dir, root / "cache", root / "ckpt")
    result = run_training(compose_cfg(run.overrides(run.ckpt_dir)), root / "run", progress=False)
    assert result.step == run.steps and result.stop_reason == "finished"
    for name in ("best.pt", "last.pt", "config.yaml", "vocab.json"):
        assert (run.ckpt_dir / name).is_file(), name
    return run
