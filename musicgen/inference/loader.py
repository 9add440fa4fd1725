"""Loading a model for inference: one loader (`load_model` -> `LoadedModel`) for generate, evaluate and the
benchmarks, and the safe checkpoint reader that training's resume and `init_from` use as well.

A checkpoint is a dict saved with `torch.save` (written atomically by `musicgen.training.checkpoint`), carrying
everything needed to rebuild the model and to resume training:
- `format`/`version`: identify the file;
- `model_config` (plain dict, includes vocab_size) and `model_state`: rebuild with `build_model`;
- `vocab`: the vocabulary (`Vocabulary.to_dict()`), so generation tokenizes prompts exactly as in training;
- `config`: the whole resolved Hydra config of the run (data, tokenizer, model, train);
- `step`, `best_val_nll`, `train_seq_len`;
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

from ..config import PROJECT_ROOT, UserError
from ..tokenizer import REMITokenizer, Vocabulary

CHECKPOINT_FORMAT = "musicgen-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_CHECKPOINT = "checkpoints/musicgen-small.pt"


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
    return Checkpoint(path, model_config, state, vocab, config, int(data.get("step", 0)),
                      data.get("best_val_nll"), data.get("train_seq_len"), training)


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
                       "attention.local_heads": 1024}


def check_model_fits(ckpt: Checkpoint) -> None:
    """A checkpoint's model config checked before anything is built: valid, within `MODEL_CONFIG_LIMITS`, of
    its vocabulary's size, and describing exactly the tensors its weights hold (names and shapes, compared on
    the `meta` device, which allocates nothing). A one-line ValueError naming the file otherwise."""
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
    blocks = {int(m.group(1)) for name in ckpt.model_state if (m := re.match(r"blocks\.(\d+)\.", name))}
    if blocks and blocks != set(range(cfg.n_layers)):
        raise ValueError(f"checkpoint {path}: weights do not fit its model config (n_layers={cfg.n_layers}, the "
                         f"weights hold {len(blocks)} layers)")
    try:
        with torch.device("meta"):
            expected = {name: tuple(t.shape) for name, t in build_model(raw, cfg.vocab_size).state_dict().items()}
    except (NotImplementedError, RuntimeError):  # a module that cannot be built without memory: strict load checks
        return
    held = {name: tuple(t.shape) for name, t in ckpt.model_state.items()}
    missing, unexpected = sorted(set(expected) - set(held)), sorted(set(held) - set(expected))
    wrong = sorted(name for name in set(expected) & set(held) if expected[name] != held[name])
    if missing or unexpected or wrong:
        detail = (f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}" if unexpected else
                  f"{wrong[0]}: {list(held[wrong[0]])} in the file, {list(expected[wrong[0]])} in the config")
        raise ValueError(f"checkpoint {path}: weights do not fit its model config ({detail})")


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The model of a checkpoint file, in eval mode on `device`, with its tokenizer and checkpoint.

    The model config is checked against sane bounds and the weights' shapes before the model is built
    (`check_model_fits`). Half-precision exports are cast back to float32: generation and evaluation run in
    float32.
    """
    from ..model import build_model

    ckpt = load_checkpoint(path)
    check_model_fits(ckpt)
    model = build_model(ckpt.model_config, ckpt.model_config["vocab_size"])
    state = {k: v.float() if torch.is_floating_point(v) else v for k, v in ckpt.model_state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(f"checkpoint {path}: weights do not fit its model config ({first[1] if len(first) > 1 else first[0]})") from None
    if ckpt.model_config["vocab_size"] != len(ckpt.vocab):
        raise ValueError(f"checkpoint {path}: model vocab_size {ckpt.model_config['vocab_size']} != "
                         f"vocabulary size {len(ckpt.vocab)}")
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
