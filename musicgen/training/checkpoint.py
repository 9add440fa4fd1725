"""Checkpoints for training: written atomically (temp file + fsync + rename), carrying everything needed to
rebuild the model and resume. The file format and the safe reader live in `musicgen.inference.loader`
(`load_checkpoint`, used here for resume and `init_from`; `load_model` for inference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..inference.loader import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint
from ..tokenizer import Vocabulary


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`musicgen.atomic.atomic_write`: a crash never leaves half a file."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_checkpoint(path: str | Path, *, model_config: dict[str, Any], model_state: dict[str, torch.Tensor],
                    vocab: Vocabulary, config: dict[str, Any], step: int, best_val_nll: float | None,
                    train_seq_len: int | None, training_state: dict[str, Any] | None = None) -> None:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": model_config,
        "model_state": model_state,
        "vocab": vocab.to_dict(),
        "config": config,
        "step": int(step),
        "best_val_nll": best_val_nll,
        "train_seq_len": train_seq_len,
    }
    payload.update(training_state or {})
    atomic_torch_save(payload, path)


def export_inference_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> Path:
    """Strip optimizer/RNG state (and optionally store weights as fp16) for shipping a model.

    Positional parameters (SPE, decay) always stay fp32: fp16 rounding of a SineSPE frequency gives a
    phase error of 1.6 rad at lag 20,000, and a decay rate near 1 rounds to a different time constant.
    Their starting values (``positional_init``) are kept for the diagnostics.
    """
    from ..inference.parameters import positional_names_of_config

    ckpt = load_checkpoint(src)
    keep_fp32 = positional_names_of_config(ckpt.model_config)
    state = {k: (v.half() if half and torch.is_floating_point(v) and k not in keep_fp32 else v).contiguous()
             for k, v in ckpt.model_state.items()}
    keep = {k: v for k, v in ckpt.training_state.items() if k == "positional_init"}
    save_checkpoint(dst, model_config=ckpt.model_config, model_state=state, vocab=ckpt.vocab, config=ckpt.config,
                    step=ckpt.step, best_val_nll=ckpt.best_val_nll, train_seq_len=ckpt.train_seq_len,
                    training_state=keep)
    return Path(dst)
