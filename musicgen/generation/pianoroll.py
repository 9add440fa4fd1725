"""Piano-roll PNG of a generated MIDI file: pitch against time in bars (bottom axis) and seconds (top axis).

Bar lines come from the file's metre map and seconds from its tempo map, so the picture shows exactly what
the .mid holds; the prompt region is shaded so the continuation is easy to judge. Notes are drawn as one
PolyCollection (fast even for tens of thousands of notes), coloured by velocity. Uses the Agg backend: no
display needed.
"""

from __future__ import annotations

from pathlib import Path

import miditoolkit
import numpy as np

from ..atomic import atomic_savefig
from .timeline import bar_ticks, midi_end_tick, tick_to_seconds


def plot_pianoroll(midi: miditoolkit.MidiFile, path: str | Path, prompt_end_tick: int = 0,
                   title: str = "", regenerated: list[tuple[int, int]] | None = None,
                   sections: list[tuple[int, str]] | None = None) -> Path:
    """Write the piano roll of `midi` to `path`; ticks before `prompt_end_tick` are shaded as the prompt, the
    (start, end) tick spans of `regenerated` (infilled bars) in another colour, and a planned form's
    `sections` ((first bar, 0-based, letter)) are lettered above the roll at their first bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    notes = [n for inst in midi.instruments for n in inst.notes]
    end_tick = max(midi_end_tick(midi), prompt_end_tick, *(hi for _, hi in regenerated or []), 1)
    lines = bar_ticks(midi, end_tick)
    bar_index = np.arange(len(lines), dtype=np.float64)

    def to_bars(ticks: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(ticks, dtype=np.float64), lines, bar_index)

    n_bars = float(to_bars(np.asarray([end_tick]))[0])
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.35 * n_bars + 2), 40.0), 5.0), dpi=100)
    if prompt_end_tick > 0:
        ax.axvspan(0, float(to_bars(np.asarray([prompt_end_tick]))[0]), color="0.85", zorder=0, label="prompt")
    for k, (lo, hi) in enumerate(regenerated or []):
        ax.axvspan(*(float(x) for x in to_bars(np.asarray([lo, hi]))), color="#f6d7a7", zorder=0,
                   label="regenerated" if k == 0 else None)
    if notes:
        starts = to_bars(np.asarray([n.start for n in notes]))
        ends = to_bars(np.asarray([max(n.end, n.start + 1) for n in notes]))
        pitches = np.asarray([n.pitch for n in notes], dtype=np.float64)
        velocity = np.asarray([n.velocity for n in notes], dtype=np.float64)
        boxes = np.stack([np.stack([starts, pitches - 0.4], 1), np.stack([ends, pitches - 0.4], 1),
                          np.stack([ends, pitches + 0.4], 1), np.stack([starts, pitches + 0.4], 1)], axis=1)
        ax.add_collection(PolyCollection(boxes, array=velocity, cmap="viridis", clim=(1, 127), linewidths=0,
                                         zorder=2))
        ax.set_ylim(pitches.min() - 2, pitches.max() + 2)
    else:
        ax.set_ylim(20, 108)
    ax.vlines(bar_index, *ax.get_ylim(), colors="0.6", linewidth=0.5, zorder=1)
    for first_bar, letter in sections or []:
        ax.axvline(first_bar, color="0.2", linewidth=1.2, zorder=1)
        ax.text(first_bar + 0.15, 1.0, letter, transform=ax.get_xaxis_transform(), va="bottom", ha="left",
                fontsize=11, fontweight="bold")
    ax.set_xlim(0, max(n_bars, 1e-3))
    ax.set_xlabel("bar")
    ax.set_ylabel("MIDI pitch")

    seconds_of_line = tick_to_seconds(midi, lines)
    top = ax.secondary_xaxis("top", functions=(lambda b: np.interp(b, bar_index, seconds_of_line),
                                               lambda s: np.interp(s, seconds_of_line, bar_index)))
    top.set_xlabel("seconds")
    if title:
        ax.set_title(title, fontsize=9)
    if prompt_end_tick > 0 or regenerated:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    try:
        atomic_savefig(fig, path)
    finally:
        plt.close(fig)
    return path
