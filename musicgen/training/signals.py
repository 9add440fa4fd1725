"""SIGINT / SIGTERM during training: finish the step, save, exit (never lose the work since the last save)."""

from __future__ import annotations

import signal
from typing import Any

__all__ = ["StopFlag"]


class StopFlag:
    """Set by SIGINT/SIGTERM; the loop finishes the current step, saves, and exits."""

    def __init__(self) -> None:
        self.raised = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopFlag":
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal"

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
