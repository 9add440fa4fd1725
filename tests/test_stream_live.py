"""``python -m musicgen.live`` (musicgen/live.py): one-line errors without a MIDI backend or port, steering
lines, and the player's timing with a fake MIDI output and a fake clock (no port, no real-time wait)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from musicgen import live
from musicgen.config import UserError
from musicgen.generation.controls import ControlConfig
from musicgen.generation.guards import GuardConfig
from musicgen.generation.sampling import SamplingConfig
from musicgen.generation.bar_stream import BarGenerator
from musicgen.generation.stream import LiveStream
from musicgen.inference import load_model


def test_without_the_rtmidi_backend_it_says_so_in_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "rtmidi", None)  # as on a machine without python-rtmidi
    monkeypatch.delitem(sys.modules, "mido.backends.rtmidi", raising=False)
    assert live.main(["--midi-out", "Synth"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pip install -e '.[live]'" in err


def test_an_unknown_port_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(live, "midi_outputs", lambda: ["Synth A:0", "Midi Through"])
    assert live.main(["--midi-out", "Piano"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no MIDI output named 'Piano'" in err and "'Synth A:0'" in err
    monkeypatch.setattr(live, "midi_outputs", lambda: [])
    assert live.main(["--midi-out", "Piano"]) == 2
    assert "outputs: none" in capsys.readouterr().err
    assert live.main([]) == 2 and "--midi-out NAME" in capsys.readouterr().err


def test_steering_lines() -> None:
    assert live.parse_change("key=G; density = high") == {"key": "G", "density": "high"}
    assert live.parse_change("top-p=0.9") == {"top_p": "0.9"}
    with pytest.raises(UserError, match="NAME=VALUE"):
        live.parse_change("seed=3")


def test_play_sends_every_note_at_its_time(note_checkpoint: Path) -> None:
    loaded = load_model(note_checkpoint, "cpu")
    stream = LiveStream(lambda: BarGenerator(loaded.model, loaded.tokenizer, SamplingConfig(), GuardConfig(),
                                             ControlConfig(), 3), ahead_bars=8)
    now = [100.0]
    sent: list[tuple[float, list[int]]] = []

    def sleep(seconds: float) -> None:
        now[0] += max(seconds, 0.005)

    try:
        assert stream.bars_from(5, timeout=60), "the bars it plays are written before the fake clock runs"
        played = live.play(stream, lambda m: sent.append((now[0], m)), latency=0.5, bars=4, clock=lambda: now[0],
                           sleep=sleep, preroll=0.0)
        bars = stream.bars_from(0)
    finally:
        stream.stop()
    assert played == 4
    ons = [(t, m) for t, m in sent if m[0] & 0xF0 == 0x90]
    offs = [m for _, m in sent if m[0] & 0xF0 == 0x80]
    due = {(round(100.0 + n[0] + 0.5, 3), n[2]) for b in bars[:4] for n in b.notes}
    for t, message in ons:  # each at its note's time (the fake clock steps by at most 10 ms)
        assert any(pitch == message[1] and 0 <= t - at <= 0.011 for at, pitch in due), (t, message)
    early = [n for b in bars[:3] for n in b.notes]  # every note of bars 1-3 was due before bar 5 began
    assert len(ons) >= len(early) > 0
    assert len(offs) == len(ons), "every note released (at its end, or when play stops)"
