"""A planned form (musicgen/generation/form_plan.py): parsing, one-line errors, the rewind itself (a returning
section resumes the state its first occurrence started from), per-section chord charts, and on the shipped model
sections with the same letter that resemble each other far more than sections with different letters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from musicgen.config import UserError
from musicgen.evaluation.form import own_bars, section_similarity
from musicgen.generation import GenerateOptions, generate
from musicgen.generation.form_plan import FormPlan, Section, SectionState, parse_form, parse_form_chords
from musicgen.tokenizer import REMITokenizer, TokenType

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "musicgen-small.pt"
def bars_of(ids: list[int]) -> list[list[int]]:
    """Token ids split at their Bar tokens (the first bar from its Bar on)."""
    vocab = REMITokenizer().vocab
    bars: list[list[int]] = []
    for token in ids:
        if token == vocab.bar_id:
            bars.append([token])
        elif bars and vocab.type_of(token) != TokenType.EOS:
            bars[-1].append(token)
    return bars


def test_parse_form() -> None:
    assert parse_form("A8 B8 a8 C4") == (Section("A", 8), Section("B", 8), Section("A", 8), Section("C", 4))
    for bad, message in (("", "give sections"), ("A8 B", "not a section"), ("A0", "not a section"),
                         ("AB8", "not a section"), ("A8 B4 A4", "keeps its length")):
        with pytest.raises(UserError, match=message):
            parse_form(bad)


def test_section_chords_become_the_chart() -> None:
    sections = parse_form("A2 B1 A2 C3")
    charts = parse_form_chords("A: Am F; b: G; C: C | F G", sections)
    assert charts == {"A": "Am F", "B": "G", "C": "C | F G"}
    assert FormPlan(sections, False).chart(charts) == "Am | F | G | Am | F | C | F G | C"
    assert FormPlan(sections, True).chart(charts) == "G | Am | F | C | F G | C"  # the prompt is the first A
    for bad, message in (("A: Am; B: G", "no chart for section"), ("A: Am; B: G; C: C; D: F", "not in the form"),
                         ("A Am", "colon")):
        with pytest.raises(UserError, match=message):
            parse_form_chords(bad, sections)


@pytest.mark.parametrize("options, message", [
    ({"form": "A4 B4", "bars": 8}, "bars"), ({"form": "A4 B4", "tokens": 100}, "tokens"),
    ({"form": "A4 B4", "chords": "C G", "form_chords": "A: C; B: G"}, "chords"),
    ({"form": "A4 B4", "prompt": "x.mid", "infill": "2-3"}, "infill"),
    ({"form_chords": "A: C"}, "needs a form"), ({"form": "A4 B4", "form_recall": -1}, "form_recall")])
def test_options_that_cannot_go_with_a_form(options, message) -> None:
    with pytest.raises(UserError, match=message):
        GenerateOptions.from_mapping(options)


@pytest.mark.parametrize("inference", [False, True], ids=["generic_step", "lean_step"])
def test_section_state_rewinds_the_stack_not_the_ring(inference: bool) -> None:
    """Resuming a captured state gives the same next logits as when it was captured, however far the piece
    went on since, and a second time too (the step updates states in place); the recall ring keeps growing."""
    import torch

    from musicgen.model import build_model
    from support import small_cfg

    torch.manual_seed(0)
    cfg = small_cfg(dropout=0.0)
    cfg["attention"].update(decay="learned", feature_map="elu")
    cfg["recall"] = {"window": 64, "key_dim": 8, "bar_clock": True, "max_lag_bars": 8}
    model = build_model(cfg, 40, time_markers=(3, 10, 8)).eval()
    with torch.no_grad():  # the head copies nothing, so the output is the stack's alone (the ring differs)
        model.recall.sentinel_bias.fill_(80.0)
    tokens = torch.randint(4, 40, (60,))
    with torch.inference_mode() if inference else torch.no_grad():
        state = model.init_state(1, generator=torch.Generator().manual_seed(1))
        for t in tokens[:20]:
            _, state = model.step(t.view(1), state)
        kept = SectionState.capture(state)
        first, state = model.step(tokens[20].view(1), state)
        for t in tokens[21:40]:
            _, state = model.step(t.view(1), state)
        stored = state.recall.stored
        for again in range(2):
            kept.restore(state)
            resumed, state = model.step(tokens[20].view(1), state)
            torch.testing.assert_close(resumed, first)
            assert state.recall.stored == stored + 1 + again
            if again == 0:  # play on after the first return before rewinding once more
                _, state = model.step(tokens[41].view(1), state)
                stored += 1


def test_plan_rewinds_where_sections_return(note_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan keeps a state at each new letter's first Bar and resumes it at each return, in piece bars."""
    import musicgen.generation.form_plan as form_plan

    calls: list[tuple[str, int]] = []
    capture, restore = SectionState.capture.__func__, SectionState.restore

    def spy_capture(cls, state):
        calls.append(("keep", state.position))
        return capture(cls, state)

    def spy_restore(self, state):
        calls.append(("resume", self.position))
        return restore(self, state)

    monkeypatch.setattr(form_plan.SectionState, "capture", classmethod(spy_capture))
    monkeypatch.setattr(form_plan.SectionState, "restore", spy_restore)
    piece = generate(note_checkpoint, form="A3 B2 A3 C1 B2", seed=1, log=None, progress=False)[0]
    assert piece.n_bars == 11 and piece.stop_reason == "bars"
    assert [s["from"] for s in piece.sections] == ["new", "new", "returns", "new", "returns"]
    assert [c[0] for c in calls] == ["keep", "keep", "resume", "keep", "resume"]
    kept = {calls[0][1]: "A", calls[1][1]: "B"}
    assert kept[calls[2][1]] == "A" and kept[calls[4][1]] == "B"  # each return resumes its own letter


def test_prompt_is_the_first_section_and_charts_apply(note_checkpoint: Path, pop909_dir: Path, tmp_path: Path) -> None:
    song = pop909_dir / "020.mid"
    with pytest.raises(UserError, match="the prompt, which has 8 bars"):
        generate(note_checkpoint, song, prompt_bars=8, form="A4 B4 A4", log=None, progress=False)
    piece = generate(note_checkpoint, song, prompt_bars=4, prompt_time_signature="index", form="A4 B2 A4",
                     form_chords="A: Am F; B: G C", seed=2, output_dir=str(tmp_path), log=None, progress=False)[0]
    assert [s["from"] for s in piece.sections] == ["prompt", "new", "returns"]
    assert piece.n_bars == 6
    meta = json.loads((tmp_path / "sample_00.json").read_text())
    assert meta["form"] == piece.sections and meta["controls"]["chords"] == "G | C | Am | F | Am | F"
    vocab = REMITokenizer().vocab
    chords = [[vocab.tokens[t] for t in bar if vocab.type_of(t) == TokenType.CHORD]
              for bar in bars_of(piece.continuation_ids)]
    assert [c[0] for c in chords] == ["Chord_G:maj", "Chord_C:maj", "Chord_A:min", "Chord_F:maj", "Chord_A:min",
                                      "Chord_F:maj"]


@pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped checkpoint")
def test_shipped_model_restates_a_section() -> None:
    piece = generate(SHIPPED, form="A8 B8 A8 B8", seed=3, log=None, progress=False)[0]
    sections = [(s["letter"], s["first_bar"] - 1, s["bars"]) for s in piece.sections]
    result = section_similarity(own_bars(piece.midi, 32), sections)
    assert result["same"] > result["different"] + 0.25, result
    assert result["exact_share"] < 0.9, result  # varied, not pasted
