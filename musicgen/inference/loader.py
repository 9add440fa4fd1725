"""Loading a model for inference: one loader (`load_model` -> `LoadedModel`) for generate, evaluate, the studio
and the benchmarks; the checkpoint file itself (save, safe load, export) is :mod:`.checkpoint`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import PROJECT_ROOT, UserError
from ..tokenizer import REMITokenizer, Vocabulary
from .checkpoint import Checkpoint, load_checkpoint

DEFAULT_CHECKPOINT = "checkpoints/musicgen-small.pt"


@dataclass
class LoadedModel:
    """A model ready for inference: in eval mode on `device`, with the tokenizer of its vocabulary and the
    checkpoint it came from (config, step, training length ...)."""

    model: Any
    tokenizer: REMITokenizer
    checkpoint: Checkpoint
    device: torch.device

    @property
    def vocab(self) -> Vocabulary:
        return self.checkpoint.vocab

    @property
    def path(self) -> Path:
        return self.checkpoint.path

    @property
    def train_len(self) -> int:
        """The training length L (0 when the checkpoint records none)."""
        ckpt = self.checkpoint
        return ckpt.train_seq_len or int(((ckpt.config or {}).get("train") or {}).get("seq_len") or 0)


#: sane bounds of a loaded checkpoint's model config (the shipped model: 4 layers, d_model 256, d_ff 1024): a
#: 1.8 MB file claiming n_layers=400, d_model=4096 must not allocate gigabytes before its weights are compared
MODEL_CONFIG_LIMITS = {"n_layers": 512, "d_model": 32768, "n_heads": 1024, "d_ff": 262144, "vocab_size": 65535,
                       "attention.n_features": 16384, "pe.realizations": 16384, "pe.sines": 1024,
                       "pe.kernel_size": 65536, "pe.max_len": 1 << 20, "attention.local_window": 1 << 16,
                       "attention.local_heads": 1024, "recall.window": 1 << 16, "recall.key_dim": 4096,
                       "recall.max_lag_bars": 1 << 16}


def parameter_floor(cfg: Any) -> int:
    """A lower bound of the number of parameters a model config describes (embedding, output layer, attention
    and feed-forward matrices; the SPE and decay parameters only add to it), computed without building it."""
    d, layers, vocab = cfg.d_model, cfg.n_layers, cfg.vocab_size or 0
    per_layer = 4 * d * d + 2 * d * cfg.d_ff
    if cfg.attention.local_window:
        per_layer += 4 * d * cfg.attention.local_heads * cfg.head_dim
    if cfg.pe.kind == "spe_conv":
        per_layer += 2 * cfg.pe.kernel_size * cfg.n_heads * cfg.head_dim // (cfg.n_layers if cfg.pe.share else 1)
    recall = 2 * d * cfg.recall.key_dim if cfg.recall.window else 0
    return layers * per_layer + vocab * d * (1 if cfg.tie_embeddings else 2) + recall


def check_model_fits(ckpt: Checkpoint) -> torch.nn.Module:
    """A checkpoint's model config checked, and its model built (on the CPU, weights not loaded yet), only when
    that is safe: the config must be valid, within `MODEL_CONFIG_LIMITS`, of its vocabulary's size, and describe
    no more parameters than the file holds (:func:`parameter_floor`; so building costs about what the file's own
    tensors do, whatever a crafted config claims); then the built model's tensors must be exactly the file's
    (names and shapes). A one-line ValueError naming the file otherwise. (Building on the `meta` device instead
    costs 2 s of imports per process: torch's reference kernels pull in torch._dynamo.)"""
    from ..model import build_model
    from ..model.config import ModelConfig

    path, raw = ckpt.path, ckpt.model_config
    try:
        cfg = ModelConfig.from_mapping(raw)
    except (ValueError, KeyError, TypeError) as exc:
        message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ValueError(f"checkpoint {path}: impossible model config ({message})") from None
    for key, limit in MODEL_CONFIG_LIMITS.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part, None)
        if isinstance(value, (int, float)) and value > limit:
            raise ValueError(f"checkpoint {path}: model config {key}={value} is beyond any sane model "
                             f"(at most {limit}); the file is damaged or crafted")
    if cfg.vocab_size is None or cfg.vocab_size != len(ckpt.vocab):
        raise ValueError(f"checkpoint {path}: model vocab_size {cfg.vocab_size} != vocabulary size {len(ckpt.vocab)}")
    rc = cfg.recall
    if rc.window and rc.bar_clock and (rc.bar_token, rc.position_first, rc.position_count) != ckpt.vocab.time_markers():
        raise ValueError(f"checkpoint {path}: its recall head's bar clock reads tokens {rc.bar_token} / "
                         f"{rc.position_first}+{rc.position_count}, which are not its vocabulary's Bar / Position "
                         "tokens; the file is damaged or crafted")
    blocks = {int(m.group(1)) for name in ckpt.model_state if (m := re.match(r"blocks\.(\d+)\.", name))}
    if blocks and blocks != set(range(cfg.n_layers)):
        raise ValueError(f"checkpoint {path}: weights do not fit its model config (n_layers={cfg.n_layers}, the "
                         f"weights hold {len(blocks)} layers)")
    stored = sum(t.numel() for t in ckpt.model_state.values())
    claimed = parameter_floor(cfg)
    if claimed > 2 * stored + 100_000:
        raise ValueError(f"checkpoint {path}: its model config describes at least {claimed:,} parameters, the file "
                         f"holds {stored:,}; the file is damaged or crafted")
    model = build_model(raw, cfg.vocab_size)
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    held = {name: tuple(t.shape) for name, t in ckpt.model_state.items()}
    missing, unexpected = sorted(set(expected) - set(held)), sorted(set(held) - set(expected))
    wrong = sorted(name for name in set(expected) & set(held) if expected[name] != held[name])
    if missing or unexpected or wrong:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                  f"{wrong[0]}: {list(held[wrong[0]])} in the file, {list(expected[wrong[0]])} in the config")
        raise ValueError(f"checkpoint {path}: weights do not fit its model config ({detail})")
    return model


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The model of a checkpoint file, in eval mode on `device`, with its tokenizer and checkpoint.

    The model config is checked against sane bounds and the file's own size before the model is built, and the
    weights' names and shapes before they are loaded (`check_model_fits`). Half-precision exports are cast
    back to float32: generation and evaluation run in float32.
    """
    ckpt = load_checkpoint(path)
    model = check_model_fits(ckpt)
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in ckpt.model_state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"checkpoint {path}: weights do not fit its model config ({first[1] if len(first) > 1 else first[0]})") from None
    model.to(device).eval()
    return LoadedModel(model, REMITokenizer(ckpt.vocab.config), ckpt, torch.device(device))


def resolve_checkpoint(path: str | Path | None) -> Path:
    """A checkpoint path: as given when it exists (relative to the working directory), else relative to the
    project root (where the shipped `checkpoints/musicgen-small.pt` lives); a clear error when neither exists."""
    given = Path(path or DEFAULT_CHECKPOINT).expanduser()
    candidates = [given] if given.is_absolute() else [given, PROJECT_ROOT / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    hint = ""
    if str(path or DEFAULT_CHECKPOINT) == DEFAULT_CHECKPOINT:
        hint = " (the shipped model is not there: train one with `python train.py` and pass checkpoint=...)"
    raise UserError(f"checkpoint {given}: no such file{hint}")
