"""Generation options: one validated dataclass shared by the Python API and the CLI (conf/generate.yaml).

Validation happens before the checkpoint is loaded, so a typo or contradictory setting costs nothing and is
reported as one line (UserError).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ..config import PROJECT_ROOT, UserError, require_known_keys
from ..config import resolve_device as _resolve_device
from .guards import DEFAULT_MAX_EMPTY_BARS, DEFAULT_MAX_NOTES_PER_ONSET, GuardConfig
from .render import RENDER_CHOICES
from .sampling import SamplingConfig
from .session import DEFAULT_MAX_TOKENS, StopConfig

DEFAULT_CHECKPOINT = "checkpoints/musicgen-small.pt"
#: bars of continuation when the user sets no length at all (bars=auto and no tokens/seconds)
DEFAULT_BARS = 16


@dataclass
class GenerateOptions:
    """Everything `generate` accepts (see conf/generate.yaml for the documentation of each field)."""

    checkpoint: str | None = DEFAULT_CHECKPOINT
    prompt: str | None = None
    prompt_bars: int | None = None
    prompt_seconds: float | None = None
    prompt_time_signature: str = "file"
    include_prompt: bool = True
    bars: int | str | None = "auto"
    tokens: int | None = None
    seconds: float | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    allow_eos: bool = True
    num_samples: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    repetition_window: int = 16
    no_repeated_pitch: bool = True
    max_notes_per_onset: int = DEFAULT_MAX_NOTES_PER_ONSET
    max_empty_bars: int = DEFAULT_MAX_EMPTY_BARS
    seed: int | None = None
    device: str = "auto"
    output_dir: str | None = None
    name: str = "sample"
    pianoroll: bool = True
    render: str = "none"
    soundfont: str | None = None
    progress: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "GenerateOptions":
        """From a dict or the Hydra config; unknown keys are an error naming them."""
        values = {k: v for k, v in dict(values).items() if k != "hydra"}
        require_known_keys(cls, values, "generate", list_known=True)
        return cls(**values)

    def __post_init__(self) -> None:
        if int(self.num_samples) != self.num_samples or self.num_samples < 1:
            raise UserError(f"num_samples must be an integer >= 1, got {self.num_samples}")
        if self.prompt_bars is not None and self.prompt_seconds is not None:
            raise UserError("set prompt_bars or prompt_seconds, not both")
        if (self.prompt_bars is not None or self.prompt_seconds is not None) and not self.prompt:
            raise UserError("prompt_bars/prompt_seconds need a prompt=path/to/file.mid")
        render = "none" if self.render in (None, False) else str(self.render)
        if render not in RENDER_CHOICES:
            raise UserError(f"render={self.render!r}: use one of {', '.join(RENDER_CHOICES)}")
        self.render = render
        if not str(self.name) or "/" in str(self.name) or "\\" in str(self.name):
            raise UserError(f"name={self.name!r}: must be a plain file-name prefix (no folders)")
        if self.seed is not None and int(self.seed) != self.seed:
            raise UserError(f"seed must be an integer, got {self.seed}")
        self.sampling  # noqa: B018 - validate now
        self.stop  # noqa: B018
        self.guards  # noqa: B018

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(float(self.temperature), int(self.top_k), float(self.top_p),
                              float(self.repetition_penalty), int(self.repetition_window))

    @property
    def guards(self) -> GuardConfig:
        return GuardConfig(bool(self.no_repeated_pitch), self.max_notes_per_onset, self.max_empty_bars)

    @property
    def stop(self) -> StopConfig:
        return StopConfig(self.resolved_bars(), self.tokens, self.seconds, self.max_tokens, bool(self.allow_eos))

    def resolved_bars(self) -> int | None:
        """``bars=auto`` (the default) is 16 bars only while no other length is set: a limit the user gives
        (``tokens=20000`` or ``seconds=60``) replaces the default one instead of being cut short by it."""
        if self.bars == "auto":
            return DEFAULT_BARS if self.tokens is None and self.seconds is None else None
        if isinstance(self.bars, str):
            raise UserError(f"bars={self.bars!r}: use an integer >= 1, auto or null")
        return self.bars

    def resolved_seed(self) -> int:
        """The seed to use: the option, or a fresh random one (recorded in the .json, so still reproducible)."""
        return int(self.seed) if self.seed is not None else secrets.randbits(31)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_checkpoint(path: str | Path | None) -> Path:
    """A checkpoint path: as given when it exists (relative to the working directory), else relative to the
    project root (where the shipped `checkpoints/musicgen-small.pt` lives); a clear error when neither exists."""
    given = Path(path or DEFAULT_CHECKPOINT).expanduser()
    candidates = [given] if given.is_absolute() else [given, PROJECT_ROOT / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.resolve()
    hint = ""
    if str(path or DEFAULT_CHECKPOINT) == DEFAULT_CHECKPOINT:
        hint = " (the shipped model is not there: train one with `python train.py` and pass checkpoint=...)"
    raise UserError(f"checkpoint {given}: no such file{hint}")


def resolve_device(option: str | None) -> str:
    """The device as a string (recorded in each .json): `musicgen.config.resolve_device`, shared by every entry
    point, so device=cuda without a GPU is a one-line error before the checkpoint is loaded."""
    return str(_resolve_device(option))
