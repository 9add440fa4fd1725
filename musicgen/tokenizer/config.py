"""Tokenizer settings. They define the vocabulary, so they travel with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

#: sane upper bounds: a vocabulary (a stored one included) is built from these, so an absurd value such as
#: tempo_bins=200000000 or a grid of 4,000,000 would allocate gigabytes before anything else could object
MAX_GRID = 192
MAX_TEMPO_BINS = 1024
MAX_TEMPO = 10000.0


@dataclass(frozen=True)
class TokenizerConfig:
    """REMI tokenizer settings (see conf/tokenizer/remi.yaml for the meaning of each field).

    `grid` counts grid steps per whole note, so 16 is a sixteenth-note grid and a 4/4 bar has 16 positions;
    bars in other metres get as many positions as their length needs (a 6/8 bar has 12).
    """

    grid: int = 16
    velocity_bins: int = 32
    tempo_bins: int = 48
    tempo_min: float = 24.0
    tempo_max: float = 300.0
    chords: bool = True
    programs: bool = True

    def __post_init__(self) -> None:
        from ..config import UserError, check_bool, check_float, check_int

        try:  # types first (`tokenizer.chords=no` is false, `grid=abc` an error naming it, not a TypeError)
            for name in ("grid", "velocity_bins", "tempo_bins"):
                object.__setattr__(self, name, check_int(f"tokenizer.{name}", getattr(self, name)))
            for name in ("tempo_min", "tempo_max"):
                object.__setattr__(self, name, check_float(f"tokenizer.{name}", getattr(self, name)))
            for name in ("chords", "programs"):
                object.__setattr__(self, name, check_bool(f"tokenizer.{name}", getattr(self, name)))
        except UserError as exc:
            raise ValueError(str(exc)) from None
        if self.grid < 4 or self.grid % 4 or self.grid > MAX_GRID:
            raise ValueError(f"tokenizer.grid must be a multiple of 4 (steps per whole note) in 4..{MAX_GRID}, "
                             f"got {self.grid}")
        if not 1 <= self.velocity_bins <= 127:
            raise ValueError(f"tokenizer.velocity_bins must be in 1..127, got {self.velocity_bins}")
        if not 2 <= self.tempo_bins <= MAX_TEMPO_BINS or not 0 < self.tempo_min < self.tempo_max <= MAX_TEMPO:
            raise ValueError(f"tokenizer.tempo_bins must be in 2..{MAX_TEMPO_BINS} and 0 < tempo_min < tempo_max <= "
                             f"{MAX_TEMPO:g}, got {self.tempo_bins}, {self.tempo_min:g}, {self.tempo_max:g}")

    @property
    def steps_per_quarter(self) -> int:
        return self.grid // 4

    @property
    def max_bar_steps(self) -> int:
        """Longest bar the Position tokens can address: four whole notes (e.g. 16/4)."""
        return self.grid * 4

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "TokenizerConfig":
        """Build from a dict or OmegaConf node (the `tokenizer` group, or a checkpoint's stored one); unknown keys
        and wrong types are a ValueError naming the option."""
        from ..typed_config import typed_group

        return typed_group(cls, values, "tokenizer", error=ValueError)
