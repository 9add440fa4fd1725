"""`RunConfig`: everything one training run is configured with, one typed, frozen object built at the edge.

Why: the trainer used to receive Hydra's raw config beside the typed `TrainOptions` and read `cfg.data`,
`cfg.tokenizer` and `cfg.logger` key by key. Now `RunConfig.from_mapping` turns each group into its dataclass
(`typed_config.typed_group`, each error naming its option) before anything runs, and the trainer reads only
this. `to_dict()` is what a checkpoint stores as its config (plain, every key, the same group names).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..config import UserError, check_int
from ..data.options import DataOptions
from ..model.config import ModelConfig
from ..tokenizer import TokenizerConfig
from ..typed_config import plain
from .loggers import LoggerOptions
from .options import TrainOptions

GROUPS = ("data", "tokenizer", "model", "train", "logger", "seed", "device")


@dataclass(frozen=True)
class RunConfig:
    """One run (conf/config.yaml and its groups)."""

    data: DataOptions
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainOptions
    logger: LoggerOptions
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_mapping(cls, cfg: "RunConfig | Mapping[str, Any]") -> "RunConfig":
        """From the composed Hydra config (or its dict); the groups are checked in the order a run uses them."""
        if isinstance(cfg, RunConfig):
            return cfg
        values = plain(cfg)
        unknown = sorted(set(values) - set(GROUPS) - {"hydra"})
        if unknown:
            raise UserError(f"unknown option(s) {', '.join(unknown)} (a run has {', '.join(GROUPS)})")
        seed = check_int("seed", values.get("seed", 0), minimum=0, maximum=2**32 - 1)  # numpy's seed range
        train = TrainOptions.from_mapping(values.get("train"))
        data = DataOptions.from_mapping(values.get("data"))
        try:
            tokenizer = TokenizerConfig.from_mapping(values.get("tokenizer"))
            model = ModelConfig.from_mapping(values.get("model") or {})  # every model option now, not later
        except ValueError as exc:  # what both raise for a stored config too (a damaged checkpoint's)
            raise UserError(str(exc)) from None
        logger = LoggerOptions.from_mapping(values.get("logger"))
        return cls(data, tokenizer, model, train, logger, seed, str(values.get("device", "auto")))

    def to_dict(self) -> dict[str, Any]:
        """Plain and JSON-serialisable (tuples as lists), as checkpoints and config.yaml store it."""
        return _lists(asdict(self))


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value
