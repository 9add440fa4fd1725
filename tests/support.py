"""Helpers the test modules share (not fixtures: constants, config builders and fakes used at import time or
with arguments). Fixtures live in conftest.py."""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]

#: an untrained tiny model of the default preset's family: what is tested with it is machinery, not music
TINY = {"name": "tiny", "n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 64, "dropout": 0.0,
        "attention": {"n_features": 16}, "pe": {"realizations": 16, "sines": 3}}


#: the one tiny training run of the tests, as Hydra overrides (key -> value); `micro` is the 1-layer, 32-token
#: variant for tests that train many times and only look at the machinery (resume, faults, error lines)
TINY_TRAINING = {"data.max_files": 20, "model.n_layers": 2, "model.d_model": 64, "model.n_heads": 2, "model.d_ff": 128,
                 "model.dropout": 0.1, "train.seq_len": 128, "train.batch_size": 4, "train.warmup_steps": 2,
                 "train.val_every": 10, "train.val_batches": 2, "train.val_length_factor": 2,
                 "train.val_long_batches": 1, "train.ckpt_every": 10, "train.lr": 2e-3, "logger": "none",
                 "data.num_workers": 1}
MICRO_TRAINING = {**TINY_TRAINING, "data.max_files": None, "model.n_layers": 1, "model.d_model": 32, "model.d_ff": 64,
                  "model.dropout": None, "train.seq_len": 32, "train.batch_size": 2, "train.warmup_steps": 1,
                  "train.val_every": 2, "train.val_batches": 1, "train.val_length_factor": 0,
                  "train.val_long_batches": None, "train.ckpt_every": 2, "train.lr": None,
                  "data.augment.transpose": 0, "device": "cpu"}


#: what a fine-tune of a tiny checkpoint (python -m musicgen.finetune, musicgen.finetune.cli.compose_config) takes
#: of the tiny run: the training options only (the model is the checkpoint's, the data the folder's), on 64-token
#: crops (the fine-tune tests' tunes are a few hundred tokens) and a higher learning rate
FINETUNE_TRAINING = {"train.seq_len": 64, "train.batch_size": TINY_TRAINING["train.batch_size"],
                     "train.val_batches": TINY_TRAINING["train.val_batches"], "train.lr": 3e-3}

#: the shared trained tiny run (conftest's `trained_run`): TINY_TRAINING for 10 steps on 64-token crops (training
#: length L = 64: evaluate's buckets are [0,64) and [64,128)), a cheap validation, no dropout, on the CPU
TRAINED_RUN_STEPS = 10
TRAINED_RUN_SETTINGS = {"train__seq_len": 64, "train__val_batches": 1, "train__val_length_factor": 0,
                        "train__val_long_batches": None, "model__dropout": None, "device": "cpu"}


def _as_overrides(values: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """`key=value` for each of `values` updated with `settings` (dots as double underscores); None leaves a key out."""
    values = {**values, **{key.replace("__", "."): value for key, value in settings.items()}}
    return [f"{key}={value}" for key, value in values.items() if value is not None]


def tiny_train_overrides(pop909_dir: Path, cache: Path, ckpt: Path, steps: int = 20, micro: bool = False,
                         **settings: Any) -> list[str]:
    """The one command line of a tiny training run (seconds on a CPU): on `pop909_dir` (20 files) or another
    folder, its cache in `cache`, checkpoints in `ckpt`. ``settings``: more overrides or replaced ones, dots as
    double underscores (``train__seq_len=64``); None leaves a key out."""
    values: dict[str, Any] = {"data.root": pop909_dir, "data.cache_dir": cache, "train.ckpt_dir": ckpt,
                              **(MICRO_TRAINING if micro else TINY_TRAINING), "train.max_steps": steps}
    return _as_overrides(values, settings)


def tiny_finetune_overrides(**settings: Any) -> list[str]:
    """The tiny run's options for a fine-tune (FINETUNE_TRAINING), as overrides after the fine-tune command's own
    arguments; ``settings`` as in tiny_train_overrides."""
    return _as_overrides(FINETUNE_TRAINING, settings)


@dataclass(frozen=True)
class TrainedRun:
    """A finished tiny training run (conftest's session fixture `trained_run`, TRAINED_RUN_SETTINGS): its data
    folder, token cache and checkpoint folder (best.pt, last.pt, config.yaml, vocab.json). Shared by every test
    module: read it, never write into it (copy `ckpt_dir` to damage or resume it)."""

    root: Path
    cache: Path
    ckpt_dir: Path
    steps: int = TRAINED_RUN_STEPS

    @property
    def last(self) -> Path:
        return self.ckpt_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.ckpt_dir / "best.pt"

    def overrides(self, ckpt: Path, steps: int | None = None, *extra: str) -> list[str]:
        """This run's command line with checkpoints in `ckpt` and `steps` steps (default: the run's own), then
        `extra`: to resume a copy of the run (``train.resume=true``) or to train another run on its cache."""
        return tiny_train_overrides(self.root, self.cache, ckpt, self.steps if steps is None else steps,
                                    **TRAINED_RUN_SETTINGS) + list(extra)

    def copy_to(self, dest: Path) -> Path:
        """A copy of the checkpoint folder at `dest` (for a test that changes or resumes it)."""
        shutil.copytree(self.ckpt_dir, dest)
        return dest


def compose_cfg(overrides: list[str]):
    """The Hydra config train.py would get for these overrides."""
    from hydra import compose, initialize_config_dir

    from musicgen.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def env() -> dict[str, str]:
    """The environment of a command-line run in a test: no wandb, one thread, this checkout importable."""
    return dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", OMP_NUM_THREADS="1",
                PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def run_cli(args: list[str], cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    """`python *args` in `cwd`, output captured."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)


def single_error_line(proc: subprocess.CompletedProcess) -> str:
    """The run failed with exactly one stderr line, `error: ...`, and no traceback."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def serve_studio(app):
    """Serve a studio app with uvicorn in a daemon thread on a free 127.0.0.1 port, once it has started:
    (server, thread, port). Stop it with ``server.should_exit = True`` and ``thread.join()``."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 120
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "the studio server did not start"
        time.sleep(0.05)
    return server, thread, port


class FixedPreferenceModel:
    """A 'model' whose next-token logits never change: the worst case of a collapsed model."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits

    def prefill(self, ids: torch.Tensor, generator=None):
        return self.logits.expand(ids.shape[0], ids.shape[1], -1).clone(), None

    def step(self, tokens: torch.Tensor, state):
        return self.logits.expand(tokens.shape[0], -1).clone(), state


# --- model variants of the parity tests -------------------------------------------------------------------
VOCAB = 40


def small_cfg(**over) -> dict:
    """Tiny model: chunk_size 16 and kernel_size 24 so that L=70 crosses both."""
    cfg = {
        "n_layers": 2, "d_model": 32, "n_heads": 2, "d_ff": 48, "dropout": 0.1,
        "attention": {"kind": "linear", "feature_map": "performer", "n_features": 16, "chunk_size": 16},
        "pe": {"kind": "spe_sine", "gated": True, "share": True, "realizations": 16, "sines": 3,
               "kernel_size": 24, "ape": "sinusoidal", "max_len": 128},
    }
    cfg = copy.deepcopy(cfg)
    for key, val in over.items():
        sec, _, name = key.rpartition("__")
        (cfg[sec] if sec else cfg)[name] = val
    return cfg


PE_VARIANTS = {
    "spe_sine_gated": {"pe__kind": "spe_sine", "pe__gated": True},
    "spe_sine": {"pe__kind": "spe_sine", "pe__gated": False},
    "spe_conv_gated": {"pe__kind": "spe_conv", "pe__gated": True},
    "spe_conv": {"pe__kind": "spe_conv", "pe__gated": False},
    "ape_learned": {"pe__kind": "ape", "pe__ape": "learned"},
    "ape_sinusoidal": {"pe__kind": "ape", "pe__ape": "sinusoidal"},
    "none": {"pe__kind": "none"},
}
CASES = {f"{pe}-{fm}": {**kw, "attention__feature_map": fm} for pe, kw in PE_VARIANTS.items() for fm in ("performer", "elu")}
CASES["softmax-ape"] = {"attention__kind": "softmax", "pe__kind": "ape"}
CASES["softmax-spe_sine_gated"] = {"attention__kind": "softmax", "pe__kind": "spe_sine"}
CASES["spe_conv_gated-unshared"] = {"pe__kind": "spe_conv", "pe__share": False}
CASES["spe_sine-unshared"] = {"pe__kind": "spe_sine", "pe__share": False}
CASES["spe_conv_gated-fft"] = {"pe__kind": "spe_conv", "pe__kernel_size": 40}  # FFT path (kernel >= 32)
# forgetting (attention.decay) with every positional encoding, both feature maps, fixed and learned rates
for _pe in ("spe_sine_gated", "spe_sine", "spe_conv_gated", "spe_conv", "ape_sinusoidal", "none"):
    for _fm in ("performer", "elu"):
        CASES[f"{_pe}-{_fm}-decay"] = {**PE_VARIANTS[_pe], "attention__feature_map": _fm,
                                       "attention__decay": "learned", "attention__decay_tau_min": 4.0,
                                       "attention__decay_tau_max": 64.0}
CASES["spe_sine_gated-performer-decay_fixed"] = {"attention__decay": "fixed", "attention__decay_tau_min": 4.0}


def step_all(model, x: torch.Tensor, seed: int) -> torch.Tensor:
    state = model.init_state(x.shape[0], generator=torch.Generator().manual_seed(seed))
    outs = []
    for i in range(x.shape[1]):
        logits, state = model.step(x[:, i], state)
        outs.append(logits)
    return torch.stack(outs, 1)


def lean_towards_notes(model: torch.nn.Module, tokenizer: Any, bar: float = 0.0) -> None:
    """Make a random model write notes and bar lines rather than EOS, time signatures or program changes,
    so a 4-bar sample has notes whatever the seed. The final LayerNorm's bias adds a fixed per-token
    preference (through column 0 of the tied embedding) on top of the random logits: each token family gets
    a total weight exp(preference), shared by its tokens (positions get weight e each). Still random and
    untrained, just not note-shy. ``bar``: the Bar token's preference (lower: even greedy decoding fills bars)."""
    from musicgen.tokenizer import TokenType

    vocab = tokenizer.vocab
    family = {TokenType.EOS: -6.0, TokenType.BAR: bar, TokenType.TIME_SIG: -4.0,
              TokenType.TEMPO: -3.0, TokenType.CHORD: -3.0, TokenType.PROGRAM: -4.0, TokenType.VELOCITY: 0.5}
    pref = torch.zeros(len(vocab))
    for kind, value in family.items():
        span = vocab.ranges[kind]
        if span.size:
            pref[span.start:span.stop] = value - math.log(span.size)
    positions = vocab.ranges[TokenType.POSITION]
    pref[positions.start:positions.stop] = 1.0  # per position: only the few left in the bar are allowed
    with torch.no_grad():
        model.ln_f.weight.mul_(0.3)
        model.ln_f.bias.zero_()
        model.ln_f.bias[0] = 4.0
        model.embed.weight[:, 0] = pref / 4.0
