"""Metrics sinks: wandb (online/offline/disabled from config) and the console. Rank 0 only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from ..config import UserError, check_int

LOGGERS = ("none", "wandb")
WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class LoggerOptions:
    """The `logger` group (conf/logger/none.yaml states these defaults; wandb.yaml what differs)."""

    name: str = "none"
    mode: str = "disabled"
    project: str = "musicgen"
    entity: str | None = None
    run_name: str | None = None
    tags: tuple[str, ...] = ()
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.name not in LOGGERS:
            raise UserError(f"logger.name={self.name}: use {' or '.join(LOGGERS)}")
        if self.mode not in WANDB_MODES:
            raise UserError(f"logger.mode={self.mode}: use online, offline or disabled")
        check_int("logger.log_every", self.log_every, minimum=1)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "LoggerOptions":
        from ..typed_config import typed_group

        return typed_group(cls, values, "logger")


class RunLogger:
    """Sends metric dicts to wandb (when `logger.name == wandb` and mode != disabled) and prints a summary line."""

    def __init__(self, options: LoggerOptions, run_dir: Path, config: dict[str, Any], enabled: bool) -> None:
        self.enabled = enabled
        self.run = None
        if not enabled or options.name != "wandb":
            return
        mode = str(os.environ.get("WANDB_MODE") or options.mode)  # tests and CI force it (no network: no hang)
        if mode == "disabled":
            return
        if mode not in ("online", "offline"):
            raise ValueError(f"WANDB_MODE={mode}: use online, offline or disabled")
        import wandb

        self.run = wandb.init(project=options.project, entity=options.entity, name=options.run_name,
                              tags=list(options.tags), mode=mode, dir=str(run_dir), config=config, resume="allow")

    def log(self, metrics: dict[str, float], step: int, console: bool = False) -> None:
        if not self.enabled:
            return
        if self.run is not None:
            self.run.log(metrics, step=step)
        if console:
            text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
            tqdm.write(f"step {step}: {text}")

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
