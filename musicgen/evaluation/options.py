"""`EvaluateOptions`: everything `evaluate` accepts, validated once when built (conf/evaluate.yaml documents
each field under the same name)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import UserError, check_bool, check_float, check_int
from ..typed_config import plain, typed_group
from ..generation.sampling import SamplingConfig


@dataclass
class EvaluateOptions:
    """Everything `evaluate` accepts; conf/evaluate.yaml documents each field (same names)."""

    checkpoint: str | None = "checkpoints/musicgen-small.pt"
    data_root: str | None = None
    data_cache_dir: str | None = None
    #: read the songs with their beats on the grid (None: as the checkpoint's training did, data.align_beats);
    #: to compare a model trained on aligned songs with one trained on the files as they are, on the same songs
    data_align_beats: bool | None = None
    split: str = "test"
    max_files: int | None = None
    length_factor: int = 4
    train_len: int | None = None
    batch_size: int = 4
    device: str = "auto"
    seed: int = 1234
    smooth: int = 64
    generated: str | None = None
    drift_tokens: int | None = None
    drift_samples: int = 4
    drift_window: int = 1000
    temperature: float = SamplingConfig.temperature  # the drift pieces sample as generate.py does
    top_p: float = SamplingConfig.top_p
    output_dir: str | None = None
    progress: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "EvaluateOptions":
        """From the Hydra config (conf/evaluate.yaml; `data.root`/`data.cache_dir` nest) or a flat dict."""
        values = {k: v for k, v in dict(plain(values)).items() if k != "hydra"}
        data = values.pop("data", None) or {}
        unknown_data = sorted(set(data) - {"root", "cache_dir", "align_beats"})
        if unknown_data:
            raise UserError(f"unknown data option(s): {', '.join(unknown_data)} (evaluate.py takes data.root, "
                            "data.cache_dir and data.align_beats; every other data setting comes from the checkpoint)")
        if data.get("align_beats") is not None:
            values["data_align_beats"] = check_bool("data.align_beats", data["align_beats"])
        if data.get("root") is not None:
            values["data_root"] = data["root"]
        if data.get("cache_dir") is not None:
            values["data_cache_dir"] = data["cache_dir"]
        return typed_group(cls, values, ":evaluate")

    def __post_init__(self) -> None:
        if self.split not in ("train", "valid", "test"):
            raise UserError(f"split={self.split!r}: use train, valid or test")
        for name in ("length_factor", "batch_size", "drift_samples", "drift_window", "smooth"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=1))
        self.max_files = check_int("max_files", self.max_files, minimum=1, allow_none=True)
        self.train_len = check_int("train_len", self.train_len, minimum=1, allow_none=True)
        self.progress = check_bool("progress", self.progress)
        self.drift_tokens = check_int("drift_tokens", self.drift_tokens, minimum=1, allow_none=True)
        self.seed = check_int("seed", self.seed, minimum=0)
        self.temperature = check_float("temperature", self.temperature, minimum=0.0)
        self.top_p = check_float("top_p", self.top_p, minimum=0.0, maximum=1.0, exclusive_min=True)
        if self.generated is not None and not Path(str(self.generated)).is_dir():
            raise UserError(f"generated={self.generated}: no such folder")
