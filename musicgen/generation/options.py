"""Generation options: one validated dataclass shared by the Python API, the CLI (conf/generate.yaml) and the
studio.

The options are flat (`temperature=1.1 bars=32 chords=...` on the command line and as keyword arguments), but
each group is owned by its own dataclass, which holds its defaults and validates its values:
`SamplingConfig` (sampling.py), `StopConfig` (session.py; `bars=auto` is resolved here), `GuardConfig`
(guards.py) and `ControlConfig` (controls.py). The group fields below take their defaults from those classes,
and `__post_init__` validates by building them; conf/generate.yaml states the same defaults for Hydra (a test
keeps the two equal). Validation happens before the checkpoint is loaded, so a typo or contradictory setting
costs nothing and is reported as one line (UserError).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Mapping

from ..config import UserError, check_bool, check_float, check_int
from ..typed_config import plain, typed_group
from ..inference import DEFAULT_CHECKPOINT
from .controls import ControlConfig
from .guards import CORPUS_OPTIONS, GuardConfig, resolve_guard_values
from .form_plan import DEFAULT_FORM_RECALL, form_conflicts
from .infill import infill_ranges
from ..tokenizer import parse_time_signature
from .render import RENDER_CHOICES
from .sampling import SamplingConfig
from .session import StopConfig

#: bars of continuation when the user sets no length at all (bars=auto and no tokens/seconds)
DEFAULT_BARS = 16


@dataclass(frozen=True)
class GenerateOptions:
    """Everything `generate` accepts (see conf/generate.yaml for the documentation of each field)."""

    checkpoint: str | None = DEFAULT_CHECKPOINT
    prompt: str | None = None
    prompt_bars: int | None = None
    prompt_seconds: float | None = None
    prompt_time_signature: str = "file"
    include_prompt: bool = True
    # infilling (infill.py): bars of the prompt to regenerate, e.g. "9-12,25-28"; candidates sampled per range
    infill: str | None = None
    infill_candidates: int = 4
    # a planned form (form_plan.py): sections such as "A8 B8 A8", and optionally each section's chord chart
    form: str | None = None
    form_chords: str | None = None
    form_recall: float = DEFAULT_FORM_RECALL
    # StopConfig (bars: auto | N | null, resolved by `resolved_bars`)
    bars: int | str | None = "auto"
    tokens: int | None = StopConfig.tokens
    seconds: float | None = StopConfig.seconds
    max_tokens: int = StopConfig.max_tokens
    allow_eos: bool = StopConfig.allow_eos
    num_samples: int = 1
    # SamplingConfig
    temperature: float = SamplingConfig.temperature
    top_k: int = SamplingConfig.top_k
    top_p: float = SamplingConfig.top_p
    repetition_penalty: float = SamplingConfig.repetition_penalty
    repetition_window: int = SamplingConfig.repetition_window
    tonal_memory: float = SamplingConfig.tonal_memory
    tonal_half_life: float = SamplingConfig.tonal_half_life
    # GuardConfig. The bounds of CORPUS_OPTIONS default to None: the checkpoint's corpus statistics, else
    # GuardConfig's default (POP909's), by `resolve_guard_values` (see `with_checkpoint_defaults`)
    no_repeated_pitch: bool = GuardConfig.no_repeated_pitch
    max_notes_per_onset: int | None = None
    max_empty_bars: int | None = None
    min_bars: int | None = None
    min_notes_per_bar: float | None = None
    max_notes_per_bar: float | None = None
    density_window_bars: int = GuardConfig.density_window_bars
    max_mean_pitch: float | None = None
    min_mean_pitch: float | None = None
    register_window_notes: int = GuardConfig.register_window_notes
    max_copied_bars: int = GuardConfig.max_copied_bars
    copy_penalty: float = GuardConfig.copy_penalty
    # ControlConfig
    chords: str | None = ControlConfig.chords
    bpm: float | None = ControlConfig.bpm
    time_signature: str | None = ControlConfig.time_signature
    density: str | float | None = ControlConfig.density
    key: str | None = ControlConfig.key
    chord_tones: str = ControlConfig.chord_tones
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
        return typed_group(cls, {k: v for k, v in dict(plain(values)).items() if k != "hydra"}, ":generate")

    def __post_init__(self) -> None:
        # Types first, each error naming its option (seed=abc, top_k=1.5, temperature=hot, allow_eos=maybe ...).
        for name in ("include_prompt", "allow_eos", "no_repeated_pitch", "pianoroll", "progress"):
            self._set(name, check_bool(name, getattr(self, name)))
        self._set("num_samples", check_int("num_samples", self.num_samples, minimum=1))
        self._set("seed", check_int("seed", self.seed, minimum=0, allow_none=True))  # -1 failed after loading
        self._set("prompt_bars", check_int("prompt_bars", self.prompt_bars, minimum=1, allow_none=True))
        self._set("infill_candidates", check_int("infill_candidates", self.infill_candidates, minimum=1))
        self._set("form_recall", check_float("form_recall", self.form_recall, minimum=0.0))
        self._set("prompt_seconds", check_float("prompt_seconds", self.prompt_seconds, minimum=0.0,
                                                exclusive_min=True, allow_none=True))
        # The groups validate (and type) their own fields; the typed values are kept here.
        for group in (self.sampling, self.guards, StopConfig(None, self.tokens, self.seconds, self.max_tokens,
                                                             self.allow_eos)):
            for f in fields(group):
                if f.name in _FLAT and f.name != "bars" and not (f.name in CORPUS_OPTIONS
                                                                 and getattr(self, f.name) is None):
                    self._set(f.name, getattr(group, f.name))
        if self.bars not in ("auto", None):
            if isinstance(self.bars, str) and not self.bars.strip().lstrip("-").isdigit():
                raise UserError(f"bars={self.bars!r}: use an integer >= 1, auto or null")
            self._set("bars", check_int("bars", self.bars, minimum=1))
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
        self._set("render", render)
        if not str(self.name) or "/" in str(self.name) or "\\" in str(self.name):
            raise UserError(f"name={self.name!r}: must be a plain file-name prefix (no folders)")
        self.stop  # noqa: B018 - validate now
        self.controls  # noqa: B018
        if self.infill is not None:
            infill_ranges(self)
        if self.form is not None:
            form_conflicts(self)
        elif self.form_chords is not None:
            raise UserError("form_chords needs a form (e.g. form='A8 B8 A8')")

    def _set(self, name: str, value: Any) -> None:
        """Store a validated value while the instance is being built (it is frozen afterwards: change options
        with ``dataclasses.replace``, which validates again)."""
        object.__setattr__(self, name, value)

    def _group(self, cls: type) -> Any:
        return cls(**{f.name: getattr(self, f.name) for f in fields(cls) if f.name in _FLAT})

    @property
    def sampling(self) -> SamplingConfig:
        return self._group(SamplingConfig)

    @property
    def guards(self) -> GuardConfig:
        """The decoding rules: options left unset take GuardConfig's defaults here; generation first fills them
        from the checkpoint's corpus statistics (`with_checkpoint_defaults`)."""
        return GuardConfig(**resolve_guard_values({f.name: getattr(self, f.name) for f in fields(GuardConfig)
                                                   if f.name in _FLAT}))

    def with_checkpoint_defaults(self, corpus: Mapping[str, Any] | None) -> "GenerateOptions":
        """These options with every decoding bound left unset (None) taken from a checkpoint's corpus statistics
        (`Checkpoint.decoding_defaults`) or, when it has none, from GuardConfig's defaults (`resolve_guard_values`:
        an explicit option always wins). Called by `generate_with` once the checkpoint is loaded."""
        unset = {name: None for name in CORPUS_OPTIONS if getattr(self, name) is None}
        if not unset:
            return self
        resolved = resolve_guard_values(unset, corpus)
        return replace(self, **{name: resolved[name] for name in unset})

    @property
    def controls(self) -> ControlConfig:
        """Chord chart, bpm, time_signature, density and key (musicgen/generation/controls.py)."""
        return self._group(ControlConfig)

    @property
    def stop(self) -> StopConfig:
        return StopConfig(self.resolved_bars(), self.tokens, self.seconds, self.max_tokens, self.allow_eos)

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


#: the flat option names (a group field not among them, such as GuardConfig.enabled, keeps its default)
_FLAT = frozenset(f.name for f in fields(GenerateOptions))
