"""A planned form: ``form="A8 B8 A8 B8 C8 A8"`` writes a piece whose sections return when the plan says.

Why it works with this model: generation is recurrent, so the model's whole memory of the piece at the start of
a section is one fixed-size state. When a letter first appears, that state is kept (just before the section's
first Bar token); when the letter returns, the linear-attention stack resumes from it, as if the piece were
starting that section again, while the recall head's ring still holds everything played since, including the
section's first occurrence. Resumed, the stack's hidden states match the keys it left in the ring at the first
occurrence, so the head finds that passage and copies it with a high gate, and sampling varies it: the
section comes back recognisably, not pasted (docs/form.md measures how close). A softmax transformer would
have to keep or recompute the whole prefix to do this; here it costs one state (about 1 MB) per letter.

Nothing else is rewound: the grammar, the tempo, the decoding rules, the bar count and the recall ring go on.
With a prompt, the prompt is the plan's first section (``form="A8 B8 A8"`` with an 8-bar prompt: the prompt
is A), so a musician's own material is what returns. ``form_chords="A: Am F C G; B: F G C C"`` gives each
section its chord chart (it becomes the piece's chart, section by section, under the ``chords`` control).

This is a decode-time plan, so it is left out of the form measures of the model itself (docs/form.md).
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from dataclasses import dataclass
from typing import Any, Callable

from tqdm import tqdm

from ..config import UserError
from .prompt import Prompt
from .session import GenerationSession, SampleResult

_SECTION = re.compile(r"^([A-Za-z])(\d+)$")
#: how much the recall head is pointed at a returning section's earlier bars (``form_recall``; docs/compose.md
#: measures it): 0, since the shipped model's own recall brings a returning section back
DEFAULT_FORM_RECALL = 0.0
#: token cap per planned bar (generation's default cap, 4,096 tokens, would end a long plan early)
TOKENS_PER_BAR = 300


@dataclass(frozen=True)
class Section:
    letter: str
    bars: int


def parse_form(spec: Any) -> tuple[Section, ...]:
    """``"A8 B8 A8"`` -> sections; letters are case-insensitive (``a8`` is A), bar counts >= 1."""
    words = str(spec).replace(",", " ").split()
    if not words:
        raise UserError(f"form={spec!r}: give sections such as 'A8 B8 A8' (a letter and its number of bars)")
    sections = []
    for word in words:
        match = _SECTION.match(word)
        if match is None or int(match.group(2)) < 1:
            raise UserError(f"form={spec}: {word!r} is not a section; write a letter and its bars, e.g. A8")
        sections.append(Section(match.group(1).upper(), int(match.group(2))))
    for s in sections:
        first = next(f for f in sections if f.letter == s.letter)
        if s.bars != first.bars:
            raise UserError(f"form={spec}: section {s.letter} has {first.bars} bars and then {s.bars}; a section "
                            "that returns keeps its length (use another letter for a new section)")
    return tuple(sections)


def parse_form_chords(spec: Any, sections: tuple[Section, ...]) -> dict[str, str]:
    """``"A: Am F C G; B: F G C C"`` -> letter -> chart; every letter of the form must have one."""
    charts: dict[str, str] = {}
    for part in str(spec).split(";"):
        if not part.strip():
            continue
        letter, sep, chart = part.partition(":")
        if not sep or len(letter.strip()) != 1 or not chart.strip():
            raise UserError(f"form_chords={spec!r}: write 'A: Am F C G; B: F G C C' (a section letter, a colon, "
                            "its chord chart; sections separated by ;)")
        charts[letter.strip().upper()] = " ".join(chart.split())
    letters = {s.letter for s in sections}
    missing, unknown = sorted(letters - set(charts)), sorted(set(charts) - letters)
    if missing or unknown:
        raise UserError(f"form_chords={spec!r}: " + ("; ".join(
            ([f"no chart for section(s) {', '.join(missing)}"] if missing else [])
            + ([f"section(s) {', '.join(unknown)} are not in the form"] if unknown else []))))
    return charts


@dataclass(frozen=True)
class FormPlan:
    """The sections, whether the prompt is the first, and where each generated section starts."""

    sections: tuple[Section, ...]
    prompt_is_first: bool

    @property
    def generated(self) -> tuple[Section, ...]:
        return self.sections[1:] if self.prompt_is_first else self.sections

    @property
    def total_bars(self) -> int:
        """Bars to generate."""
        return sum(s.bars for s in self.generated)

    def starts(self) -> dict[int, Section]:
        """Continuation bar number (1-based, as the session counts Bars) -> the section starting there."""
        out, bar = {}, 1
        for s in self.generated:
            out[bar] = s
            bar += s.bars
        return out

    def chart(self, charts: dict[str, str]) -> str:
        """The piece's chord chart (one chart bar per bar of music, '|' between bars), section by section,
        each section's chart repeated to fill it."""
        bars: list[str] = []
        for s in self.generated:
            own = [b.strip() for b in charts[s.letter].split("|")] if "|" in charts[s.letter] \
                else charts[s.letter].split()
            bars += [own[i % len(own)] for i in range(s.bars)]
        return " | ".join(bars)

    def describe(self) -> list[dict[str, Any]]:
        """Each section with its letter, bars and first bar in the piece (1-based, prompt included)."""
        out, bar = [], 1
        for k, s in enumerate(self.sections):
            out.append({"letter": s.letter, "bars": s.bars, "first_bar": bar,
                        "from": "prompt" if k == 0 and self.prompt_is_first else
                        ("new" if all(p.letter != s.letter for p in self.sections[:k]) else "returns")})
            bar += s.bars
        return out


def make_plan(form: Any, prompt: Prompt) -> FormPlan:
    """The plan of ``form`` for this prompt: with a prompt, its first section is the prompt and must have as
    many bars as the prompt."""
    sections = parse_form(form)
    if prompt.is_empty:
        return FormPlan(sections, False)
    if sections[0].bars != prompt.n_bars:
        raise UserError(f"form={form}: with a prompt, the first section is the prompt, which has {prompt.n_bars} "
                        f"bars; write {sections[0].letter}{prompt.n_bars} or set prompt_bars={sections[0].bars}")
    if not prompt.ends_at_bar_line:
        raise UserError(f"form={form}: the prompt must end at a bar line (use prompt_bars, not prompt_seconds)")
    if len(sections) == 1:
        raise UserError(f"form={form}: with a prompt, the form needs a section after the prompt's")
    return FormPlan(sections, True)


@dataclass
class SectionState:
    """The stack's part of a generation state (position, SPE code states, attention states), copied: what a
    returning section resumes. The recall ring is not part of it: the head must keep hearing the piece."""

    position: int
    code_states: list[Any]
    caches: list[Any]

    @classmethod
    def capture(cls, state: Any) -> "SectionState":
        return cls(state.position, copy.deepcopy(state.code_states), copy.deepcopy(state.caches))

    def restore(self, state: Any) -> None:
        """Put a copy into ``state`` (a copy: the step updates attention states in place, and a section may
        return more than once); the lean step's plan sees new caches and rebuilds itself."""
        state.position = self.position
        state.code_states = copy.deepcopy(self.code_states)
        state.caches = copy.deepcopy(self.caches)
        state.graph = None


class FormCursor:
    """A plan followed bar by bar: at the Bar token that opens a section (sampled, not yet read by the model) the
    stack's state is kept (the letter's first time) or resumed (it returns), and the recall head is pointed at
    that letter's earlier bars. The one place this happens, for a piece (`run_planned`) and for an endless stream
    (`musicgen.generation.bar_stream`).

    ``origin``: the bar number (as the caller counts bars) where the plan's first section starts. ``cycle``: the
    plan repeats for ever (a stream), and a returning section is pointed at its *latest* time rather than its
    first (the recall ring holds the last few dozen bars; a first time an hour back is long gone from it). Kept
    states and first bars carry over to a cursor that :meth:`replaced` makes, so a letter keeps its music when a
    stream's plan changes."""

    def __init__(self, sections: tuple[Section, ...], recall: float, origin: int = 1, cycle: bool = False,
                 kept: dict[str, SectionState] | None = None, seen: dict[str, int] | None = None) -> None:
        self.sections, self.recall, self.origin, self.cycle = tuple(sections), float(recall), int(origin), cycle
        self.kept: dict[str, SectionState] = dict(kept or {})
        self.seen: dict[str, int] = dict(seen or {})  # letter -> the bar (recall clock) it is pointed back to
        self._starts, bar = {}, 0
        for section in self.sections:
            self._starts[bar] = section
            bar += section.bars
        self.length = bar

    def section_at(self, bar: int) -> Section | None:
        """The section that starts at ``bar`` (None: no section starts there)."""
        offset = bar - self.origin
        if offset < 0 or (not self.cycle and offset >= self.length):
            return None
        return self._starts.get(offset % self.length if self.cycle else offset)

    def at_bar(self, bar: int, here: int, state: Any, memory: Any) -> Section | None:
        """``bar`` was just opened (its Bar token sampled, the model has not read it): rewind or keep the state
        of ``state`` there and point ``memory`` (the recall ring; None without a head) back. ``here``: the same
        bar on the recall head's bar clock."""
        section = self.section_at(bar)
        if section is None:
            return None
        letter = section.letter
        back = self.seen.get(letter)
        if letter in self.kept:
            self.kept[letter].restore(state)
        else:
            self.kept[letter] = SectionState.capture(state)
        if back is None or self.cycle:
            self.seen[letter] = here
        if memory is not None:
            memory.focus_lag = here - back if back is not None and back != here and self.recall > 0 else None
            memory.focus_bonus = self.recall
        return section

    def replaced(self, sections: tuple[Section, ...], origin: int) -> "FormCursor":
        """A new plan from bar ``origin`` on, keeping what this one kept (a letter that returns brings its music)."""
        return FormCursor(sections, self.recall, origin, self.cycle, self.kept, self.seen)


def run_planned(session: GenerationSession, prompt: Prompt, plan: FormPlan, recall: float,
                progress: bool = True, on_progress: Callable[[int, int], None] | None = None) -> SampleResult:
    """One piece following ``plan`` (a batch of one: each sample rewinds at its own bar lines). ``recall``: the
    score the recall head adds to the first occurrence's bars while a section returns (``form_recall``)."""
    logits, tracks, start_step = session.feed_prompt(prompt, 1)
    track = tracks[0]
    cursor = FormCursor(plan.generated, recall)
    if plan.prompt_is_first:  # the prompt is the first section: it starts right after BOS, at bar 1
        cursor.kept[plan.sections[0].letter] = SectionState.capture(session.state_after(prompt.ids[:1]))
        cursor.seen[plan.sections[0].letter] = 1
    memory = getattr(session.state, "recall", None)
    limit = session.stop.token_limit
    bar = tqdm(total=limit, unit="tok", desc="generating (planned form)", disable=not progress,
               dynamic_ncols=True, leave=False)
    began, steps, bars_seen = time.perf_counter(), 0, 0
    try:
        while not track.done:
            feed = session.sample(logits, tracks)
            if track.bars != bars_seen and not track.done:  # this token is the Bar of a new bar
                bars_seen = track.bars
                cursor.at_bar(bars_seen, prompt.n_bars + bars_seen, session.state, memory)
            logits = session.advance(feed)
            steps += 1
            bar.update(1)
            if on_progress is not None and steps % 64 == 0:
                on_progress(steps, limit)
    finally:
        bar.close()
    session.tokens_per_second = steps / max(time.perf_counter() - began, 1e-9)
    return session.results(prompt, tracks, start_step)[0]


def planned_controls(options: Any, plan: FormPlan) -> Any:
    """The options' controls, with the sections' chord charts as the piece's chart when ``form_chords`` is set."""
    if options.form_chords is None:
        return options.controls
    return dataclasses.replace(options.controls, chords=plan.chart(parse_form_chords(options.form_chords,
                                                                                     plan.sections)))


def form_conflicts(options: Any) -> None:
    """Options that cannot go with ``form`` (checked before any work)."""
    sections = parse_form(options.form)
    if options.form_chords is not None:
        parse_form_chords(options.form_chords, sections)
    given = [name for name, unset in (("bars", options.bars in ("auto", None)), ("tokens", options.tokens is None),
                                     ("seconds", options.seconds is None), ("infill", options.infill is None),
                                     ("chords", options.chords is None or options.form_chords is None))
            if not unset]
    if given:
        raise UserError(f"form={options.form}: {', '.join(given)} cannot be set with form (the plan says how many "
                        "bars, and form_chords gives each section its chart)")
