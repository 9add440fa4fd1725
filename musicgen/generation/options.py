"""Generation options: one validated dataclass shared by the Python API and the CLI (conf/generate.yaml).

Validation happens before the checkpoint is loaded, so a typo or contradictory setting costs nothing and is
reported as one line (UserError).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ..config import PROJECT_ROOT, UserError, check_float, check_int, require_known_keys
from ..config import resolve_device as _resolve_device
from .controls import ControlConfig
from .guards import DEFAULT_MAX_EMPTY_BARS, DEFAULT_MAX_NOTES_PER_ONSET, GuardConfig
from ..tokenizer import parse_time_signature
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
    chords: str | None = None
    bpm: float | None = None
    time_signature: str | None = None
    density: str | float | None = None
    key: str | None = None
    chord_tones: str = "only"
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
        # Types first, each error naming its option (seed=abc, top_k=1.5, temperature=hot ...).
        self.num_samples = check_int("num_samples", self.num_samples, minimum=1)
        self.seed = check_int("seed", self.seed, allow_none=True)
        for name in ("prompt_bars", "tokens"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=1, allow_none=True))
        for name in ("prompt_seconds", "seconds"):
            setattr(self, name, check_float(name, getattr(self, name), minimum=0.0, exclusive_min=True,
                                            allow_none=True))
        self.max_tokens = check_int("max_tokens", self.max_tokens, minimum=1)
        self.top_k = check_int("top_k", self.top_k, minimum=0)
        self.repetition_window = check_int("repetition_window", self.repetition_window, minimum=1)
        self.temperature = check_float("temperature", self.temperature, minimum=0.0)
        self.top_p = check_float("top_p", self.top_p, minimum=0.0, maximum=1.0, exclusive_min=True)
        self.repetition_penalty = check_float("repetition_penalty", self.repetition_penalty, minimum=1.0)
        for name in ("max_notes_per_onset", "max_empty_bars"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=0))
        if self.bars not in ("auto", None):
            if isinstance(self.bars, str) and not self.bars.strip().lstrip("-").isdigit():
                raise UserError(f"bars={self.bars!r}: use an integer >= 1, auto or null")
            self.bars = check_int("bars", self.bars, minimum=1)
        metre = str(self.prompt_time_signature) if self.prompt_time_signature is not None else "file"
        if metre not in ("file", "index"):
            try:
                parse_time_signature(metre)
            except ValueError:
                raise UserError(f"prompt_time_signature={self.prompt_time_signature!r}: use file, index or a "
                                "metre such as 4/4 or 3/4") from None
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
        self.sampling  # noqa: B018 - validate now
        self.stop  # noqa: B018
        self.guards  # noqa: B018
        self.controls  # noqa: B018

    @property
    def sampling(self) -> SamplingConfig:
        return SamplingConfig(float(self.temperature), int(self.top_k), float(self.top_p),
                              float(self.repetition_penalty), int(self.repetition_window))

    @property
    def guards(self) -> GuardConfig:
        return GuardConfig(bool(self.no_repeated_pitch), self.max_notes_per_onset, self.max_empty_bars)

    @property
    def controls(self) -> ControlConfig:
        """Chord chart, bpm, time_signature, density and key (musicgen/generation/controls.py)."""
        return ControlConfig(self.chords, self.bpm, self.time_signature, self.density, self.key, self.chord_tones)

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

    def check_time_signature(self, vocab: Any) -> None:
        """A fixed prompt metre the checkpoint's grid cannot represent (e.g. 7/1) is an error, not a silent 4/4."""
        metre = str(self.prompt_time_signature or "file")
        if metre in ("file", "index"):
            return
        if parse_time_signature(metre) not in [tuple(ts) for ts in vocab.time_signatures]:
            raise UserError(f"prompt_time_signature={metre}: this checkpoint's tokenizer (grid "
                            f"{vocab.config.grid} steps per whole note) cannot represent that metre (a bar must be a "
                            "whole number of grid steps, at most four whole notes); use e.g. 4/4, 3/4, 6/8 or file")

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
