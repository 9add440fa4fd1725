"""A generated MIDI file -> the note list the page draws as a piano roll (and plays along with).

Why the browser draws it (a <canvas>) instead of the PNG that generate.py writes: no matplotlib figure per
piece on the server (pyplot is not thread safe, and jobs run in threads), a playhead can follow the audio,
and the times are the ones the WAV is rendered from (pretty_midi's tempo map), so picture and sound agree.

A planned form's sections (``GeneratedPiece.sections``: letter, bars, first bar counted from 1 with the prompt)
are placed at the start of their first bar, in seconds, from the same bars the page numbers (``measures``, else
the file's downbeats); the page letters them above the roll with a marker line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

MAX_NOTES = 50_000  # a 300-bar piece has about 6,000; past this the page would only slow down


def roll_data(midi_path: str | Path, prompt_end_tick: int = 0, regenerated: Sequence[tuple[int, int]] = (),
              measures: Sequence[tuple[int, int]] = (), sections: Sequence[Mapping[str, Any]] = ()
              ) -> dict[str, Any]:
    """{"notes": [[start s, end s, pitch, velocity, drum 0/1], ...], "bars": [downbeat s, ...],
    "prompt_end": s, "seconds": s, "regenerated": [[start s, end s], ...], "measures": [[start s, end s], ...],
    "sections": [{"letter", "bars", "first_bar", "from", "start": s}, ...]} for the page. `regenerated`:
    (start, end) ticks of bars an edit rewrote (shaded); `measures`: (start, end) ticks of the piece's bars as
    the infill option counts them (edit.bar_ticks), which the page numbers and selects; both in the file's
    ticks. `sections`: a planned form's (GeneratedPiece.sections); one whose first bar lies beyond the roll
    (a piece that ended in silence) is left out. No plan: an empty list, and the page draws no letters."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(midi_path))
    notes = [[round(n.start, 4), round(n.end, 4), n.pitch, n.velocity, int(inst.is_drum)]
             for inst in pm.instruments for n in inst.notes]
    notes.sort(key=lambda n: (n[0], n[2]))
    end = pm.get_end_time()

    def seconds(spans: Sequence[tuple[int, int]]) -> list[list[float]]:
        return [[round(float(pm.tick_to_time(int(a))), 4), round(float(pm.tick_to_time(int(b))), 4)] for a, b in spans]

    measured = seconds(measures)
    if measured:
        end = max(end, measured[-1][1])  # the roll reaches the end of the last bar
    downbeats = [round(float(t), 4) for t in pm.get_downbeats() if t <= end + 1e-6]
    return {
        "notes": notes[:MAX_NOTES],
        "bars": downbeats,
        "prompt_end": round(float(pm.tick_to_time(int(prompt_end_tick))), 4) if prompt_end_tick > 0 else 0.0,
        "seconds": round(float(end), 4),
        "regenerated": seconds(regenerated),
        "measures": measured,
        "sections": section_starts(sections, measured, downbeats),
    }


def section_starts(sections: Sequence[Mapping[str, Any]], measures: Sequence[Sequence[float]],
                   downbeats: Sequence[float]) -> list[dict[str, Any]]:
    """Each section with "start": the second its first bar begins (bar n = measures[n - 1], else the n-th
    downbeat); sections beyond both are left out."""
    out = []
    for section in sections:
        n = int(section["first_bar"])
        if 1 <= n <= len(measures):
            start = measures[n - 1][0]
        elif 1 <= n <= len(downbeats):
            start = downbeats[n - 1]
        else:
            continue
        out.append({"letter": str(section["letter"]), "bars": int(section["bars"]), "first_bar": n,
                    "from": str(section.get("from", "new")), "start": round(float(start), 4)})
    return out
