"""Model configuration: defaults, validation and conversion to a plain (JSON-serialisable) dict.

The resolved dict is what ``MusicTransformer.config`` returns and what a checkpoint stores, so
``build_model(model.config, model.config["vocab_size"])`` rebuilds the same architecture even
if the defaults below change later (every key is written out).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULTS", "model_config_from"]

DEFAULTS: dict[str, Any] = {
    "name": "custom",
    "n_layers": 4,
    "d_model": 256,
    "n_heads": 4,
    "d_ff": 1024,
    "dropout": 0.1,
    "tie_embeddings": True,
    "attention": {
        "kind": "linear",
        "feature_map": "performer",
        "n_features": 64,
        "redraw_prob": 1.0,
        "chunk_size": "auto",
        "backend": "torch",
        "decay": "none",
        "decay_tau_min": 16.0,
        "decay_tau_max": 512.0,
    },
    "pe": {
        "kind": "spe_sine",
        "gated": True,
        "share": True,
        "realizations": 64,
        "sines": 5,
        "kernel_size": 128,
        "ape": "sinusoidal",
        "max_len": 8192,
    },
}

_CHOICES = {
    ("attention", "kind"): ("linear", "softmax"),
    ("attention", "feature_map"): ("performer", "elu"),
    ("attention", "backend"): ("torch", "fast_transformers"),
    ("attention", "decay"): ("none", "fixed", "learned"),
    ("pe", "kind"): ("spe_sine", "spe_conv", "ape", "none"),
    ("pe", "ape"): ("learned", "sinusoidal"),
}


def _to_plain(cfg: Any) -> Any:
    """OmegaConf DictConfig / ListConfig -> plain containers (resolving interpolations)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(cfg, (DictConfig, ListConfig)):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(cfg, Mapping):
        return {str(k): _to_plain(v) for k, v in cfg.items()}
    return cfg


def _merge(base: dict, over: Mapping, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, val in over.items():
        where = f"{path}{key}"
        if key not in base:
            raise KeyError(f"unknown model config key {where!r}")
        if isinstance(base[key], dict):
            if not isinstance(val, Mapping):
                raise TypeError(f"model config key {where!r} must be a mapping")
            out[key] = _merge(base[key], val, where + ".")
        else:
            out[key] = val
    return out


def model_config_from(cfg: Any, vocab_size: int | None = None) -> dict:
    """Resolve a model config (dict or DictConfig; a full Hydra config with a ``model`` key also
    works) into a validated plain dict with every key set. ``vocab_size`` overrides/adds the
    vocabulary size (required by ``build_model``)."""
    plain = _to_plain(cfg) or {}
    if "model" in plain and "n_layers" not in plain:
        plain = plain["model"]
    plain = dict(plain)
    vs = plain.pop("vocab_size", None)
    out = _merge(DEFAULTS, plain)
    out["vocab_size"] = int(vocab_size if vocab_size is not None else vs) if (vocab_size or vs) else None

    for (sec, key), allowed in _CHOICES.items():
        if out[sec][key] not in allowed:
            raise ValueError(f"model.{sec}.{key}={out[sec][key]!r}; expected one of {allowed}")
    if out["d_model"] % out["n_heads"]:
        raise ValueError(f"d_model={out['d_model']} must be divisible by n_heads={out['n_heads']}")
    if not 0.0 <= float(out["attention"]["redraw_prob"]) <= 1.0:
        raise ValueError("attention.redraw_prob must be in [0, 1]")
    chunk = out["attention"]["chunk_size"]
    if chunk != "auto" and (not str(chunk).isdigit() or int(chunk) < 1):
        raise ValueError(f"model.attention.chunk_size={chunk!r}: expected 'auto' or an integer >= 1")
    for sec, key in (("attention", "n_features"), ("pe", "realizations"),
                     ("pe", "sines"), ("pe", "kernel_size"), ("pe", "max_len")):
        if int(out[sec][key]) < 1:
            raise ValueError(f"model.{sec}.{key} must be >= 1")
    att = out["attention"]
    if att["decay"] != "none":
        if att["kind"] != "linear":
            raise ValueError("model.attention.decay needs attention.kind=linear (it forgets in the recurrent state)")
        if att["backend"] == "fast_transformers":
            raise ValueError("model.attention.decay is not supported by attention.backend=fast_transformers "
                             "(its causal product has no decay): use attention.backend=torch")
        lo, hi = float(att["decay_tau_min"]), float(att["decay_tau_max"])
        if not 1.0 <= lo <= hi:
            raise ValueError(f"model.attention.decay_tau_min/max = {lo}/{hi}: need 1 <= min <= max (tokens)")
    if out["attention"]["backend"] == "fast_transformers" and out["attention"]["kind"] != "linear":
        raise ValueError("attention.backend=fast_transformers only applies to attention.kind=linear")
    return out
