"""Training end to end on ~20 POP909 files: loss falls, checkpoints load, exact resume, DDP, clear errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from musicgen.inference import load_checkpoint, load_model
from musicgen.training.trainer import run_training

from support import compose_cfg, tiny_train_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_tiny_training_loss_falls_and_checkpoint_loads(pop909_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(tiny_train_overrides(pop909_dir, cache_dir, tmp_path / "ckpt"))
    result = run_training(cfg, tmp_path / "run", progress=False)
    assert result.step == 20 and not result.interrupted
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < first - 0.5, result.losses
    for name in ("last.pt", "best.pt", "config.yaml", "vocab.json"):
        assert (tmp_path / "ckpt" / name).exists()
    loaded = load_model(tmp_path / "ckpt" / "last.pt")
    model, vocab, ckpt = loaded.model, loaded.vocab, loaded.checkpoint
    assert ckpt.step == 20 and ckpt.train_seq_len == 128 and len(vocab) == model.config["vocab_size"]
    assert ckpt.best_val_nll is not None and ckpt.best_val_nll < 7.0
    assert ckpt.config["model"]["d_model"] == 64
    logits = model(torch.tensor([[vocab.bos_id, vocab.bar_id]]))
    assert logits.shape == (1, 2, len(vocab)) and torch.isfinite(logits).all()


def test_resume_after_interruption_matches_straight_run(pop909_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    steps = 14
    straight = compose_cfg(tiny_train_overrides(pop909_dir, cache_dir, tmp_path / "a", steps))
    run_training(straight, tmp_path / "ra", progress=False)
    first = compose_cfg(tiny_train_overrides(pop909_dir, cache_dir, tmp_path / "b", steps) + ["train.stop_at_step=7"])
    result = run_training(first, tmp_path / "rb", progress=False)
    assert result.interrupted and result.step == 7
    assert load_checkpoint(tmp_path / "b" / "last.pt").step == 7
    resumed = compose_cfg(tiny_train_overrides(pop909_dir, cache_dir, tmp_path / "b", steps) + ["train.resume=true"])
    result = run_training(resumed, tmp_path / "rb2", progress=False)
    assert result.step == steps
    a = load_checkpoint(tmp_path / "a" / "last.pt").model_state
    b = load_checkpoint(tmp_path / "b" / "last.pt").model_state
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-6


def test_resume_with_other_model_shape_is_a_clear_error(pop909_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    cfg = compose_cfg(tiny_train_overrides(pop909_dir, cache_dir, tmp_path / "c", 2))
    run_training(cfg, tmp_path / "r", progress=False)
    other = compose_cfg(tiny_train_overrides(pop909_dir, cache_dir, tmp_path / "c", 4) + ["model.d_model=32",
                                                                                       "train.resume=true"])
    with pytest.raises(ValueError, match="different model shape"):
        run_training(other, tmp_path / "r2", progress=False)


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_cli_bad_input_gives_one_line_errors(tmp_path: Path) -> None:
    proc = _run_cli(["train.no_such_key=1"], tmp_path)
    assert proc.returncode != 0 and "no_such_key" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = _run_cli([f"data.root={tmp_path / 'empty'}", f"data.cache_dir={tmp_path / 'c'}", "logger=none",
                     f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no MIDI files" in errors[0] and "Traceback" not in proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_on_cpu_keep_identical_parameters(pop909_dir: Path, cache_dir: Path,
                                                              tmp_path: Path) -> None:
    overrides = tiny_train_overrides(pop909_dir, cache_dir, tmp_path / "ckpt", 6) + ["device=cpu", "train.grad_accum=2"]
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           str(REPO / "tests" / "ddp_worker.py"), str(tmp_path), *overrides]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert load_checkpoint(tmp_path / "ckpt" / "last.pt").step == 6
    # Parameters actually moved away from the (shared) initialisation.
    init = compose_cfg(overrides)
    from musicgen.model import build_model
    torch.manual_seed(int(init.seed))
    trained = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    fresh = build_model(init.model, trained.model_config["vocab_size"], time_markers=trained.vocab.time_markers())
    assert any(not torch.equal(fresh.state_dict()[k], r0[k]) for k in r0 if r0[k].is_floating_point())
