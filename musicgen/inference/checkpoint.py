"""The checkpoint file, in one module: writing it (atomically, `save_checkpoint`), reading it safely
(`load_checkpoint`, for generate, evaluate, the studio, resume and `init_from`) and stripping it for shipping
(`export_inference_checkpoint`). Building a model from it is `loader.load_model`.

A checkpoint is a dict saved with `torch.save` (written atomically by `save_checkpoint`), carrying
everything needed to rebuild the model and to resume training:
- `format`/`version`: identify the file;
- `model_config` (plain dict, includes vocab_size) and `model_state`: rebuild with `build_model`;
- `vocab`: the vocabulary (`Vocabulary.to_dict()`), so generation tokenizes prompts exactly as in training;
- `config`: the whole resolved Hydra config of the run (data, tokenizer, model, train);
- `step`, `best_val_nll`, `train_seq_len`;
- `corpus_stats` (optional): the training corpus' statistics (`musicgen.data.stats`), whose `decoding` bounds are
  generation's defaults for this model (absent in the shipped model: it decodes under `GuardConfig`'s defaults,
  which are POP909's);
- `optimizer`, `scheduler`, `rng` (absent in inference-only exports such as the shipped model).

Everything in it is a tensor or plain Python data (dict, list, tuple, str, int, float, bool, None; RNG states
as tensors), so it is read with `torch.load(weights_only=True)`: a crafted file cannot run code when it is
loaded by generate, evaluate, resume or init_from, it is refused with a one-line error naming it.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..tokenizer import Vocabulary

CHECKPOINT_FORMAT = "musicgen-checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint (see the module docstring for the fields)."""

    path: Path
    model_config: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    vocab: Vocabulary
    config: dict[str, Any]
    step: int = 0
    best_val_nll: float | None = None
    train_seq_len: int | None = None
    training_state: dict[str, Any] = field(default_factory=dict)
    corpus_stats: dict[str, Any] | None = None

    @property
    def decoding_defaults(self) -> dict[str, Any]:
        """The decoding bounds measured on this model's training corpus ({} when it records none)."""
        stats = self.corpus_stats if isinstance(self.corpus_stats, dict) else {}
        decoding = stats.get("decoding")
        return dict(decoding) if isinstance(decoding, dict) else {}

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _legacy_numpy_globals() -> list[Any]:
    """What `np.random.get_state()` pickles to: a uint32 array. Training checkpoints written before RNG states
    were stored as tensors hold one; these four globals (and no others) are allowed to read them."""
    import numpy as np

    multiarray = getattr(getattr(np, "_core", None), "multiarray", None) or np.core.multiarray
    return [multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]  # noqa: SLF001 - numpy pickles name it


def _refused_global(message: str) -> str | None:
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return match.group(1) if match else None


def _check_legacy_arrays(data: Any, path: Path, where: str = "") -> None:
    """The only numpy objects allowed in a checkpoint: uint32 arrays inside its `rng` states."""
    import numpy as np

    if isinstance(data, np.ndarray):
        if not where.startswith("rng") or data.dtype != np.uint32:
            raise ValueError(f"checkpoint {path}: refused: it holds a numpy array at {where or 'the top level'} "
                             "(musicgen checkpoints store tensors and plain data only)")
    elif isinstance(data, dict):
        for key, value in data.items():
            _check_legacy_arrays(value, path, f"{where}.{key}" if where else str(key))
    elif isinstance(data, (list, tuple)):
        for i, value in enumerate(data):
            _check_legacy_arrays(value, path, f"{where}[{i}]")


def _safe_torch_load(path: Path, map_location: str | torch.device) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain Python data only, so a crafted file cannot run code.

    A file that needs anything else is refused with one line naming it and the first foreign object; the
    single exception is the uint32 numpy array of a NumPy RNG state in older training checkpoints.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = _refused_global(str(exc))
        legacy = {f"{g.__module__}.{g.__qualname__}" for g in _legacy_numpy_globals()}
        if refused not in legacy:
            what = refused or "objects other than tensors and plain data"
            raise ValueError(f"checkpoint {path}: refused: it contains {what}, which a musicgen checkpoint never "
                             "holds (only tensors and plain data are loaded, so nothing in it was run)") from None
        first = exc
    except Exception as exc:  # noqa: BLE001 - zip/pickle framing errors from a damaged or truncated file
        raise ValueError(f"checkpoint {path}: cannot be read, damaged or truncated ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    try:  # an older training checkpoint: its NumPy RNG state is a uint32 array
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        what = _refused_global(str(exc)) or _refused_global(str(first)) or "objects other than tensors"
        raise ValueError(f"checkpoint {path}: refused: it contains {what}, which a musicgen checkpoint never "
                         "holds (only tensors and plain data are loaded, so nothing in it was run)") from None
    except Exception as exc:  # noqa: BLE001 - the second read fails the same ways as the first
        raise ValueError(f"checkpoint {path}: cannot be read, damaged or truncated ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]})") from None
    _check_legacy_arrays(data, path)
    return data


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint; a missing, damaged, foreign or unsafe file is a one-line ValueError/FileNotFoundError.

    Loading never executes code from the file (`torch.load(weights_only=True)`, see `_safe_torch_load`).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    data = _safe_torch_load(path, map_location)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {path}: not a musicgen checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path}: version {data.get('version')} is not supported")
    state, model_config = data.get("model_state"), data.get("model_config")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"checkpoint {path}: damaged (model_state is not a dict of tensors)")
    if not isinstance(model_config, dict) or not isinstance(data.get("vocab"), dict):
        raise ValueError(f"checkpoint {path}: damaged (model_config or vocab missing)")
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {path}: damaged (config is not a dict)")
    bad = next((name for name, tensor in state.items()
                if torch.is_floating_point(tensor) and not bool(torch.isfinite(tensor).all())), None)
    if bad is not None:  # a diverged run: it would score `nan` and write empty pieces blaming the seed
        raise ValueError(f"checkpoint {path}: refused: its weights hold NaN or infinite values ({bad}); use an "
                         "earlier checkpoint of that run")
    vocab = Vocabulary.from_dict(data["vocab"], source=f"checkpoint {path}")
    training = {k: data[k] for k in ("optimizer", "scheduler", "rng", "scaler", "positional_init") if k in data}
    stats = data.get("corpus_stats")
    return Checkpoint(path, model_config, state, vocab, config, int(data.get("step", 0)),
                      data.get("best_val_nll"), data.get("train_seq_len"), training,
                      stats if isinstance(stats, dict) else None)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`musicgen.atomic.atomic_write`: a crash never leaves half a file."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def save_checkpoint(path: str | Path, *, model_config: dict[str, Any], model_state: dict[str, torch.Tensor],
                    vocab: Vocabulary, config: dict[str, Any], step: int, best_val_nll: float | None,
                    train_seq_len: int | None, training_state: dict[str, Any] | None = None,
                    corpus_stats: dict[str, Any] | None = None) -> None:
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
    if corpus_stats is not None:
        payload["corpus_stats"] = corpus_stats
    payload.update(training_state or {})
    atomic_torch_save(payload, path)


def export_inference_checkpoint(src: str | Path, dst: str | Path, half: bool = True) -> Path:
    """Strip optimizer/RNG state (and optionally store weights as fp16) for shipping a model.

    Positional parameters (SPE, decay) always stay fp32: fp16 rounding of a SineSPE frequency gives a
    phase error of 1.6 rad at lag 20,000, and a decay rate near 1 rounds to a different time constant.
    Their starting values (``positional_init``) are kept for the diagnostics.
    """
    from .loader import check_model_fits
    from .parameters import positional_names

    ckpt = load_checkpoint(src)
    keep_fp32 = positional_names(check_model_fits(ckpt))  # a damaged model config: one line naming the file
    state = {k: (v.half() if half and torch.is_floating_point(v) and k not in keep_fp32 else v).contiguous()
             for k, v in ckpt.model_state.items()}
    keep = {k: v for k, v in ckpt.training_state.items() if k == "positional_init"}
    save_checkpoint(dst, model_config=ckpt.model_config, model_state=state, vocab=ckpt.vocab, config=ckpt.config,
                    step=ckpt.step, best_val_nll=ckpt.best_val_nll, train_seq_len=ckpt.train_seq_len,
                    training_state=keep, corpus_stats=ckpt.corpus_stats)
    return Path(dst)


def stamp_corpus_statistics(src: str | Path, dst: str | Path, corpus_stats: dict[str, Any]) -> Path:
    """Copy checkpoint `src` to `dst` with `corpus_stats` added (or replaced) and nothing else changed: every
    other key and tensor is written back as read, so the model generates exactly as before under the same
    decoding bounds. (How a checkpoint trained before corpus statistics existed gets them, e.g. the shipped
    model with POP909's, which are `GuardConfig`'s defaults.)"""
    data = _safe_torch_load(Path(src), "cpu")
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint {src}: not a musicgen checkpoint")
    data["corpus_stats"] = corpus_stats
    atomic_torch_save(data, dst)
    load_checkpoint(dst)  # readable, as any checkpoint
    return Path(dst)
