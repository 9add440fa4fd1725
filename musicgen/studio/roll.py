"""A generated MIDI file -> the note list the page draws as a piano roll (and plays along with).

Why the browser draws it (a <canvas>) instead of the PNG that generate.py writes: no matplotlib figure per
piece on the server (pyplot is not thread safe, and jobs run in threads), a playhead can follow the audio,
and the times are the ones the WAV is rendered from (pretty_midi's tempo map), so picture and sound agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_NOTES = 50_000  # a 300-bar piece has about 6,000; past this the page would only slow down


def roll_data(midi_path: str | Path, prompt_end_tick: int = 0) -> dict[str, Any]:
    """{"notes": [[start s, end s, pitch, velocity, drum 0/1], ...], "bars": [downbeat s, ...],
    "prompt_end": s, "seconds": s} for the page."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(midi_path))
    notes = [[round(n.start, 4), round(n.end, 4), n.pitch, n.velocity, int(inst.is_drum)]
             for inst in pm.instruments for n in inst.notes]
    notes.sort(key=lambda n: (n[0], n[2]))
    end = pm.get_end_time()
    return {
        "notes": notes[:MAX_NOTES],
        "bars": [round(float(t), 4) for t in pm.get_downbeats() if t <= end + 1e-6],
        "prompt_end": round(float(pm.tick_to_time(int(prompt_end_tick))), 4) if prompt_end_tick > 0 else 0.0,
        "seconds": round(float(end), 4),
    }
