"""The page's form fields -> a validated `GenerateOptions`.

Why the studio does not check values itself: `GenerateOptions` (and the `ControlConfig` inside it) already gives a
one-line `UserError` for every bad value (`seed=abc`, an unknown chord symbol, `top_p=2`), the same words as the
command line, so the page shows exactly what `generate.py` would say. This module only maps strings from the
form to option values (blank = unset) and adds the studio's own limits (bars, variations).

A planned form (``form="A8 B8 A8"``, musicgen/generation/form_plan.py) sets the length itself: with ``form``
given, the page's length field is left out (sent anyway, it is `GenerateOptions`' own "bars cannot be set with
form" error), and the studio's bar limit applies to the bars the plan writes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from ..config import UserError
from ..generation.options import GenerateOptions
from ..generation.controls import ControlConfig
from ..generation.sampling import SamplingConfig

#: fields the page may send (the prompt file comes separately)
FIELDS = ("prompt_bars", "prompt_time_signature", "include_prompt", "bars", "allow_eos", "temperature", "top_p",
          "seed", "num_samples", "chords", "chord_tones", "bpm", "time_signature", "density", "key", "tonal_memory",
          "form", "form_chords", "form_recall")
#: a rough count of tokens per bar of the shipped model (4/4, no density control), only for the progress bar
#: the page's lengths (a studio sketches short variations; the CLI's own defaults are in conf/generate.yaml)
STUDIO_BARS, STUDIO_VARIATIONS, STUDIO_PROMPT_BARS = 8, 2, 4
#: fields of a "Regenerate these bars" press (POST api/jobs/<id>/pieces/<n>/infill): the bars, the candidates
#: per range, and the page's sampling and control settings. bpm and time_signature are taken only so the library
#: can say why they cannot go with infill (the piece keeps its own tempo map and metre); the page omits them.
INFILL_FIELDS = ("infill", "infill_candidates", "temperature", "top_p", "seed", "chords", "chord_tones", "density",
                 "key", "tonal_memory", "bpm", "time_signature")


def form_defaults() -> dict[str, object]:
    """The form's initial values, served by ``/api/info`` and filled in by the page: one source for each (the
    option dataclasses; the studio's own lengths above), also used for a field left blank."""
    return {"temperature": SamplingConfig.temperature, "top_p": SamplingConfig.top_p,
            "tonal_memory": SamplingConfig.tonal_memory, "chord_tones": ControlConfig.chord_tones,
            "bars": STUDIO_BARS, "num_samples": STUDIO_VARIATIONS, "prompt_bars": STUDIO_PROMPT_BARS,
            "infill_candidates": GenerateOptions.infill_candidates, "form_recall": GenerateOptions.form_recall}


TOKENS_PER_BAR = 45
DENSITY_TOKENS = {"low": 0.5, "medium": 1.0, "high": 2.2}
#: with `bars` set, the token cap must not cut a long piece short: room for dense bars
CAP_TOKENS_PER_BAR = 160


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (a shared local server should not be tied up by one tab)."""

    max_bars: int = 512
    max_variations: int = 8


def _blank(value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _flag(name: str, value: str | None, default: bool) -> bool:
    text = (_blank(value) or "").lower()
    if not text:
        return default
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise UserError(f"{name}={value!r}: use true or false")


def build_options(form: Mapping[str, str], prompt_path: str | None, checkpoint: str, device: str,
                  limits: Limits = Limits()) -> GenerateOptions:
    """GenerateOptions for one Generate press; raises UserError (one line) on any bad value."""
    unknown = sorted(set(form) - set(FIELDS) - {"prompt"})
    if unknown:
        raise UserError(f"unknown form field(s): {', '.join(unknown)}")
    get = {name: _blank(form.get(name)) for name in FIELDS}
    default = form_defaults()
    planned = get["form"] is not None
    bars = get["bars"] if planned else get["bars"] or str(default["bars"])  # a form says how many bars itself
    values: dict[str, object] = {
        "checkpoint": checkpoint, "device": device, "bars": bars, "progress": False, "pianoroll": False,
        "render": "none", "name": "variation",
        "temperature": get["temperature"] or default["temperature"], "top_p": get["top_p"] or default["top_p"],
        "num_samples": get["num_samples"] or default["num_samples"], "seed": get["seed"],
        "chords": get["chords"], "chord_tones": get["chord_tones"] or default["chord_tones"], "bpm": get["bpm"],
        "time_signature": get["time_signature"], "density": get["density"], "key": get["key"],
        "tonal_memory": get["tonal_memory"] or default["tonal_memory"],
        "include_prompt": _flag("include_prompt", form.get("include_prompt"), True),
        "allow_eos": _flag("allow_eos", form.get("allow_eos"), True),
        "form": get["form"], "form_chords": get["form_chords"],
        "form_recall": get["form_recall"] or default["form_recall"],
    }
    if prompt_path is not None:
        values["prompt"] = prompt_path
        values["prompt_bars"] = get["prompt_bars"]
        values["prompt_time_signature"] = get["prompt_time_signature"] or "file"
    options = GenerateOptions.from_mapping(values)
    if options.form is not None:  # the plan's length (with a prompt, its first section is the prompt)
        check_prompt_section(options)
        written = planned_bars(options)
        if written > limits.max_bars:
            raise UserError(f"form={options.form}: {written} bars to write; the studio writes at most "
                            f"{limits.max_bars} bars per piece (start it with --max-bars to change that)")
    elif int(options.bars) > limits.max_bars:
        raise UserError(f"bars={options.bars}: the studio writes at most {limits.max_bars} bars per piece "
                        "(start it with --max-bars to change that)")
    if options.num_samples > limits.max_variations:
        raise UserError(f"variations={options.num_samples}: at most {limits.max_variations} per Generate "
                        "(start the studio with --max-variations to change that)")
    if options.form is not None:  # generation sizes a plan's token cap itself (form_plan.TOKENS_PER_BAR)
        return options
    return dataclasses.replace(options, max_tokens=max(options.max_tokens, CAP_TOKENS_PER_BAR * int(options.bars)))


def build_infill_options(form: Mapping[str, str], prompt_path: str, checkpoint: str, device: str,
                         limits: Limits = Limits(), name: str = "edit") -> GenerateOptions:
    """GenerateOptions that regenerate ``form["infill"]`` (e.g. ``3-4``) of the piece at `prompt_path`, one
    result, with the page's sampling and control settings; raises UserError (one line) on any bad value."""
    unknown = sorted(set(form) - set(INFILL_FIELDS))
    if unknown:
        raise UserError(f"unknown form field(s): {', '.join(unknown)}")
    get = {key: _blank(form.get(key)) for key in INFILL_FIELDS}
    if get["infill"] is None:
        raise UserError("infill: choose the bars to regenerate (drag across them on the piano roll, or give "
                        "from and to bar)")
    default = form_defaults()
    options = GenerateOptions.from_mapping({
        "checkpoint": checkpoint, "device": device, "prompt": prompt_path, "prompt_time_signature": "file",
        "infill": get["infill"], "infill_candidates": get["infill_candidates"] or default["infill_candidates"],
        "num_samples": 1, "progress": False, "pianoroll": False, "render": "none", "name": name,
        "temperature": get["temperature"] or default["temperature"], "top_p": get["top_p"] or default["top_p"],
        "seed": get["seed"], "chords": get["chords"], "chord_tones": get["chord_tones"] or default["chord_tones"],
        "density": get["density"], "key": get["key"], "tonal_memory": get["tonal_memory"] or default["tonal_memory"],
        "bpm": get["bpm"], "time_signature": get["time_signature"],
    })
    if options.infill_candidates > limits.max_variations:
        raise UserError(f"infill_candidates={options.infill_candidates}: at most {limits.max_variations} per range "
                        "(start the studio with --max-variations to change that)")
    return options


def planned_bars(options: GenerateOptions) -> int:
    """Bars a planned form writes: all its sections, less the first where a prompt is that section."""
    from ..generation.form_plan import parse_form

    sections = parse_form(options.form)
    return sum(s.bars for s in (sections[1:] if options.prompt else sections))


def check_prompt_section(options: GenerateOptions) -> None:
    """With a prompt, a form's first section is the prompt: the bars kept of it must be that section's (the
    library says so too, but only once the job runs; a prompt shorter than prompt_bars still fails there)."""
    from ..generation.form_plan import parse_form

    if not options.prompt or options.prompt_bars is None:
        return
    first = parse_form(options.form)[0]
    if int(options.prompt_bars) != first.bars:
        raise UserError(f"form={options.form}: with a prompt, the first section is the prompt, and "
                        f"{options.prompt_bars} of its bars are kept; write {first.letter}{options.prompt_bars} "
                        f"or keep {first.bars} bars of it")


def expected_tokens(options: GenerateOptions) -> int:
    """About how many tokens each variation will take (for the progress bar; the real count is shown beside it)."""
    density = str(options.density).lower() if options.density is not None else "medium"
    per_bar = TOKENS_PER_BAR * DENSITY_TOKENS.get(density, 1.0)
    if options.infill is not None:  # the bars of the ranges, each written by every candidate
        from ..generation.bar_ranges import parse_bar_ranges

        bars = sum(r.count for r in parse_bar_ranges(options.infill)) * int(options.infill_candidates)
        return max(64, int(per_bar * bars))
    if options.form is not None:
        return max(64, int(per_bar * planned_bars(options)))
    return max(64, min(int(options.max_tokens), int(per_bar * int(options.bars or 16))))
