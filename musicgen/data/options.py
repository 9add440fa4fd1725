"""`DataOptions`: the corpus a run reads (conf/data/*.yaml, the `data` group), typed and checked once.

The defaults are those of a folder of one's own MIDI (conf/data/midi_folder.yaml states the same; a test keeps
the two equal); conf/data/pop909.yaml sets what differs for POP909 (its metre index, beat alignment, split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..config import UserError, check_float, check_int

#: how files are split into train/valid/test (sources.py)
SPLITS = ("hash", "folder", "pop909")


@dataclass(frozen=True)
class AugmentOptions:
    """Training-time augmentation (`data.augment`): random transposition within +-transpose semitones, tempo
    shifts of up to +-tempo_shift tempo bins (0 = off)."""

    transpose: int = 6
    tempo_shift: int = 0

    def __post_init__(self) -> None:
        check_int("data.augment.transpose", self.transpose, minimum=0)
        check_int("data.augment.tempo_shift", self.tempo_shift, minimum=0)


@dataclass(frozen=True)
class DataOptions:
    """One corpus (see conf/data/midi_folder.yaml for each field's documentation)."""

    root: str
    cache_dir: str
    name: str = "midi_folder"
    download: bool = False
    time_signature: str = "file"
    align_beats: bool = False
    split: str = "hash"
    valid_fraction: float = 0.1
    crop_metre: bool = False
    num_workers: int = 0
    max_files: int | None = None
    augment: AugmentOptions = field(default_factory=AugmentOptions)

    def __post_init__(self) -> None:
        # A count of files or null (all): -1 would silently drop the last file and 0 would mean all.
        check_int("data.max_files", self.max_files, minimum=1, allow_none=True)
        check_int("data.num_workers", self.num_workers, minimum=0)
        if self.split not in SPLITS:
            raise UserError(f"data.split={self.split}: use {', '.join(SPLITS)}")
        fraction = check_float("data.valid_fraction", self.valid_fraction, minimum=0.0, exclusive_min=True)
        if fraction >= 1.0:
            raise UserError(f"data.valid_fraction={fraction}: must be in (0, 1)")
        if not str(self.root):
            raise UserError("data.root: give the folder of MIDI files")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "DataOptions":
        """From the `data` group (a Hydra node or a dict); every error names its option."""
        from ..typed_config import typed_group

        return typed_group(cls, values, "data")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def data_options(values: "DataOptions | Mapping[str, Any]") -> "DataOptions":
    """``values`` as `DataOptions` (the functions that read a corpus take either, and read only this)."""
    return values if isinstance(values, DataOptions) else DataOptions.from_mapping(values)
