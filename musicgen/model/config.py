"""Model configuration: typed, validated once at the edge, serialised as a plain dict.

:class:`ModelConfig` (with :class:`AttentionConfig` and :class:`PEConfig`) is the one typed form of a
model's architecture. :meth:`ModelConfig.from_mapping` is the edge: a ``conf/model/*.yaml`` content, a
DictConfig, a checkpoint's stored dict or a partial dict written in code goes in, is checked once
(unknown keys, choices, ranges, combinations) and comes out typed; the modules then read attributes and
never re-validate. :meth:`ModelConfig.to_dict` is what ``MusicTransformer.config`` returns and what a
checkpoint stores: every key written out (``vocab_size`` included), so a checkpoint rebuilds the same
architecture even if a default here changes later.

Defaults: the field defaults below fill the keys a config written in code leaves out (tests, quick
experiments). The presets never rely on them: ``conf/model/_base.yaml`` writes every key, and each preset
lists only its differences from it (:func:`load_preset` composes them the way Hydra does). The two agree
except ``tie_embeddings`` (``true`` here, ``false`` in ``_base.yaml`` and so in every preset: with the
sqrt(d_model)-scaled embedding a tied model starts at a high loss) and ``name``; the test suite pins that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ModelConfig", "AttentionConfig", "PEConfig", "RecallConfig", "model_config_from", "load_preset", "PRESET_DIR"]

#: conf/model/ of this checkout (the presets); ``load_preset`` reads from here unless given a path.
PRESET_DIR = Path(__file__).resolve().parents[2] / "conf" / "model"

ATTENTION_KINDS = ("linear", "softmax")
FEATURE_MAPS = ("performer", "elu")
BACKENDS = ("torch", "fast_transformers", "fla", "auto")
DECAYS = ("none", "fixed", "learned")
PE_KINDS = ("spe_sine", "spe_conv", "ape", "none")
APE_KINDS = ("learned", "sinusoidal")


@dataclass(frozen=True)
class AttentionConfig:
    """``model.attention``: the attention core (see ``conf/model/_base.yaml`` for every option)."""

    kind: str = "linear"
    feature_map: str = "performer"
    n_features: int = 64
    redraw_prob: float = 1.0
    chunk_size: int | str = "auto"  # an integer >= 1 or "auto" (kept as written: it is stored in checkpoints)
    backend: str = "torch"
    decay: str = "none"
    decay_tau_min: float = 16.0
    decay_tau_max: float = 512.0
    local_window: int = 0  # tokens of the exact softmax window beside the attention (0 = none; local_attention.py)
    local_heads: int = 2  # heads of that window (head_dim = d_model / n_heads)


@dataclass(frozen=True)
class PEConfig:
    """``model.pe``: positional encoding (SPE code generators, absolute embeddings or none)."""

    kind: str = "spe_sine"
    gated: bool = True
    share: bool = True
    realizations: int = 64
    sines: int = 5
    kernel_size: int = 128
    ape: str = "sinusoidal"
    max_len: int = 8192

    @property
    def is_spe(self) -> bool:
        return self.kind in ("spe_sine", "spe_conv")


@dataclass(frozen=True)
class RecallConfig:
    """``model.recall``: the pointer over the piece's own past (:mod:`.recall`); ``window: 0`` = none."""

    window: int = 0  # positions the head can copy from (its ring buffer at generation)
    key_dim: int = 64  # size of its queries and keys
    bar_clock: bool = False  # score candidates by their lag in bars and onset (:class:`~.recall.BarClock`)
    max_lag_bars: int = 64  # bar lags with a score of their own (further ones share the last)
    # the vocabulary's Bar token and Position range, which the bar clock reads; filled from the tokenizer when the
    # model is built for training (build_model(..., time_markers=...)), then stored with the checkpoint
    bar_token: int = 0
    position_first: int = 0
    position_count: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """The architecture of a :class:`~musicgen.model.transformer.MusicTransformer`."""

    name: str = "custom"
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    tie_embeddings: bool = True
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    pe: PEConfig = field(default_factory=PEConfig)
    recall: RecallConfig = field(default_factory=RecallConfig)
    vocab_size: int | None = None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_code_generators(self) -> int:
        """SPE code generators of the model: one shared by all layers (``pe.share``), one per layer, or none."""
        if not self.pe.is_spe:
            return 0
        return 1 if self.pe.share else self.n_layers

    # the edge ----------------------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, cfg: Any, vocab_size: int | None = None,
                     time_markers: tuple[int, int, int] | None = None) -> "ModelConfig":
        """Validate a model config (a :class:`ModelConfig`, a dict or DictConfig, partial or whole; a full
        Hydra config with a ``model`` key also works). ``vocab_size`` overrides / adds the vocabulary size;
        ``time_markers`` (Bar id, first Position id, Position count) fill a bar clock's token ids when unset."""
        if isinstance(cfg, ModelConfig):
            out = cfg
        else:
            from ..typed_config import typed_group

            plain = _to_plain(cfg) or {}
            if isinstance(plain, Mapping) and "model" in plain and "n_layers" not in plain:
                plain = plain["model"]
            out = typed_group(cls, plain, "model", error=ValueError)
        size = vocab_size if vocab_size is not None else out.vocab_size
        out = dataclasses.replace(out, vocab_size=int(size) if (vocab_size or out.vocab_size) else None)
        if time_markers is not None and out.recall.bar_clock and not out.recall.bar_token:
            bar, first, count = (int(v) for v in time_markers)
            out = dataclasses.replace(out, recall=dataclasses.replace(
                out.recall, bar_token=bar, position_first=first, position_count=count))
        out.validate()
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict with every key (the form checkpoints store)."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        att, pe = self.attention, self.pe
        for where, value, allowed in (
            ("attention.kind", att.kind, ATTENTION_KINDS), ("attention.feature_map", att.feature_map, FEATURE_MAPS),
            ("attention.backend", att.backend, BACKENDS), ("attention.decay", att.decay, DECAYS),
            ("pe.kind", pe.kind, PE_KINDS), ("pe.ape", pe.ape, APE_KINDS),
        ):
            if value not in allowed:
                raise ValueError(f"model.{where}={value!r}; expected one of {allowed}")
        for where, value in (("n_layers", self.n_layers), ("d_model", self.d_model), ("n_heads", self.n_heads),
                             ("d_ff", self.d_ff), ("vocab_size", self.vocab_size)):
            if value is not None and value < 1:  # 0 layers trained "fine"; d_model=0 divided by zero
                raise ValueError(f"model.{where} must be an integer >= 1, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        if not 0.0 <= att.redraw_prob <= 1.0:
            raise ValueError("attention.redraw_prob must be in [0, 1]")
        chunk = att.chunk_size
        if chunk != "auto" and (isinstance(chunk, bool) or not str(chunk).isdigit() or int(chunk) < 1):
            raise ValueError(f"model.attention.chunk_size={chunk!r}: expected 'auto' or an integer >= 1")
        for where, value in (("attention.n_features", att.n_features), ("pe.realizations", pe.realizations),
                             ("pe.sines", pe.sines), ("pe.kernel_size", pe.kernel_size), ("pe.max_len", pe.max_len)):
            if value < 1:
                raise ValueError(f"model.{where} must be >= 1")
        if att.decay != "none":
            if att.kind != "linear":
                raise ValueError("model.attention.decay needs attention.kind=linear (it forgets in the recurrent state)")
            if att.backend == "fast_transformers":
                raise ValueError("model.attention.decay is not supported by attention.backend=fast_transformers "
                                 "(its causal product has no decay): use attention.backend=torch")
            if not 1.0 <= att.decay_tau_min <= att.decay_tau_max:
                raise ValueError(f"model.attention.decay_tau_min/max = {att.decay_tau_min}/{att.decay_tau_max}: "
                                 "need 1 <= min <= max (tokens)")
        if att.local_window < 0:
            raise ValueError(f"model.attention.local_window={att.local_window}: expected 0 (off) or a number of tokens")
        if att.local_window and att.local_heads < 1:
            raise ValueError(f"model.attention.local_heads={att.local_heads}: expected >= 1 with a local_window")
        if att.local_window and self.head_dim % 2:
            raise ValueError(f"model.attention.local_window needs an even head dim (d_model / n_heads = {self.head_dim})")
        rc = self.recall
        if rc.window < 0 or (rc.window and (rc.key_dim < 1 or rc.max_lag_bars < 1)):
            raise ValueError(f"model.recall: window={rc.window}, key_dim={rc.key_dim}, max_lag_bars={rc.max_lag_bars}:"
                             " expected window 0 (off) or a number of tokens, key_dim and max_lag_bars >= 1")
        if rc.window and rc.bar_clock and rc.bar_token:  # unset ids are filled when the model is built
            outside = bool(self.vocab_size) and (rc.bar_token >= self.vocab_size
                                                 or rc.position_first + rc.position_count > self.vocab_size)
            if rc.position_first < 1 or rc.position_count < 1 or outside:
                raise ValueError(f"model.recall: bar_token={rc.bar_token} / positions {rc.position_first}+"
                                 f"{rc.position_count}: not a Position range inside the vocabulary "
                                 f"({self.vocab_size} tokens)")
        if att.backend in ("fast_transformers", "fla") and att.kind != "linear":
            raise ValueError(f"attention.backend={att.backend} only applies to attention.kind=linear "
                             "(softmax attention uses F.scaled_dot_product_attention)")


def model_config_from(cfg: Any, vocab_size: int | None = None) -> dict:
    """Resolve a model config into the validated plain dict with every key set (see :class:`ModelConfig`)."""
    return ModelConfig.from_mapping(cfg, vocab_size).to_dict()


# conversion ------------------------------------------------------------------------------------------
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


# presets ---------------------------------------------------------------------------------------------
def load_preset(name: str | Path, preset_dir: str | Path | None = None) -> dict:
    """A ``conf/model`` preset composed as Hydra composes ``model=<name>``: its ``defaults`` list (``_base``,
    ``_self_``) merged in order. ``name`` is a preset name or a path to a preset file. Returns a plain dict
    (for benchmarks and tests that build a model without a Hydra app)."""
    from omegaconf import OmegaConf

    path = Path(name)
    if path.suffix != ".yaml":
        path = Path(preset_dir or PRESET_DIR) / f"{name}.yaml"
    return OmegaConf.to_container(_compose_file(path), resolve=True)


def _compose_file(path: Path):
    from omegaconf import OmegaConf

    raw = OmegaConf.load(path)
    defaults = list(raw.pop("defaults", None) or [])
    if "_self_" not in defaults:
        defaults.append("_self_")
    merged = OmegaConf.create({})
    for entry in defaults:
        if entry == "_self_":
            merged = OmegaConf.merge(merged, raw)
        elif isinstance(entry, str):
            merged = OmegaConf.merge(merged, _compose_file(path.parent / f"{entry}.yaml"))
        else:
            raise ValueError(f"{path}: only plain `- <file>` / `- _self_` defaults entries are supported here")
    return merged
