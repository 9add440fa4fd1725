"""Metrics sinks: wandb (online/offline/disabled from config) and the console. Rank 0 only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm


class RunLogger:
    """Sends metric dicts to wandb (when `logger.name == wandb` and mode != disabled) and prints a summary line."""

    def __init__(self, logger_cfg: Mapping[str, Any], run_dir: Path, config: dict[str, Any], enabled: bool) -> None:
        self.enabled = enabled
        self.run = None
        if not enabled or logger_cfg.get("name") != "wandb":
            return
        mode = str(os.environ.get("WANDB_MODE") or logger_cfg.get("mode", "offline"))
        if mode == "disabled":
            return
        if mode not in ("online", "offline"):
            raise ValueError(f"logger.mode={mode}: use online, offline or disabled")
        import wandb

        self.run = wandb.init(project=logger_cfg.get("project", "musicgen"), entity=logger_cfg.get("entity"),
                              name=logger_cfg.get("run_name"), tags=list(logger_cfg.get("tags") or []),
                              mode=mode, dir=str(run_dir), config=config, resume="allow")

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
