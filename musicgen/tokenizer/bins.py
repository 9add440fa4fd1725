"""Binning of velocities, tempi and durations: the only lossy steps of quantization (besides the grid)."""

from __future__ import annotations

import bisect
import math

import numpy as np

from .config import TokenizerConfig
from .vocab import duration_bins


class Bins:
    """Value <-> bin conversions. Each bin's representative value falls back into the same bin, which is
    what makes `quantize(decode(encode(m))) == quantize(m)` hold exactly."""

    def __init__(self, config: TokenizerConfig) -> None:
        self.config = config
        # Velocity: equal-width bins over 1..127; representative = the median velocity of the bin.
        self.velocity_of_bin: list[int] = []
        table = np.minimum((np.arange(128) - 1).clip(0) * config.velocity_bins // 127, config.velocity_bins - 1)
        self._velocity_table = table.astype(np.int32)
        for b in range(config.velocity_bins):
            members = [v for v in range(1, 128) if table[v] == b]
            self.velocity_of_bin.append(members[len(members) // 2])
        # Tempo: log-spaced bin centres between tempo_min and tempo_max.
        self._log_min = math.log(config.tempo_min)
        self._log_step = (math.log(config.tempo_max) - self._log_min) / (config.tempo_bins - 1)
        self.tempo_of_bin = [round(math.exp(self._log_min + b * self._log_step), 3) for b in range(config.tempo_bins)]
        # Durations in grid steps.
        self.durations = duration_bins(config)

    def velocity_bin(self, velocity: int) -> int:
        return int(self._velocity_table[min(max(int(velocity), 1), 127)])

    def tempo_bin(self, bpm: float) -> int:
        if not math.isfinite(bpm) or bpm <= 0:
            bpm = 120.0
        b = round((math.log(bpm) - self._log_min) / self._log_step)
        return min(max(b, 0), self.config.tempo_bins - 1)

    def duration_value(self, steps: float) -> int:
        """Nearest duration bin (ties go to the shorter one); anything shorter than a step becomes one step."""
        d = self.durations
        i = bisect.bisect_left(d, steps)
        if i == 0:
            return d[0]
        if i == len(d):
            return d[-1]
        return d[i] if d[i] - steps < steps - d[i - 1] else d[i - 1]
