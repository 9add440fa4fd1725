"""Tokenizer settings. They define the vocabulary, so they travel with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping


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
        if self.grid < 4 or self.grid % 4:
            raise ValueError(f"tokenizer.grid must be a multiple of 4 (steps per whole note), got {self.grid}")
        if not 1 <= self.velocity_bins <= 127:
            raise ValueError(f"tokenizer.velocity_bins must be in 1..127, got {self.velocity_bins}")
        if self.tempo_bins < 2 or not 0 < self.tempo_min < self.tempo_max:
            raise ValueError("tokenizer.tempo_bins must be >= 2 and 0 < tempo_min < tempo_max")

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
        """Build from a dict or OmegaConf node; unknown keys are an error that names them."""
        from ..config import require_known_keys

        values = dict(values or {})
        require_known_keys(cls, values, "tokenizer", list_known=True, error=ValueError)
        return cls(**values)
