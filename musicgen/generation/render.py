"""Audio preview of a MIDI file as WAV.

With the `fluidsynth` binary and a General MIDI soundfont (option `soundfont`, else $MUSICGEN_SOUNDFONT,
else a few usual system locations) the preview uses real instrument sounds. Without them it falls back to
pretty_midi's `synthesize()` (sine waves, no extra dependency) written with the standard `wave` module,
and says why, so a user knows how to get the better preview.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from pathlib import Path
from typing import Any

import numpy as np

from ..config import UserError

RENDER_CHOICES = ("none", "wav")
#: the longest audio preview rendered: a longer piece is previewed up to here (the render note says so). Audio
#: grows with the duration, not the file: 5,000 slow bars (a 45 KB prompt) once asked for 8.2 GiB of samples.
MAX_RENDER_SECONDS = 15 * 60
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
)


def find_soundfont(option: str | Path | None) -> Path | None:
    """The soundfont to use: the option (must exist), else $MUSICGEN_SOUNDFONT, else a system one, else None."""
    if option:
        path = Path(option).expanduser()
        if not path.is_file():
            raise UserError(f"soundfont {path}: no such file")
        return path
    env = os.environ.get("MUSICGEN_SOUNDFONT")
    for candidate in ([env] if env else []) + list(SOUNDFONT_CANDIDATES):
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def write_wav(wav_path: str | Path, pcm: np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit mono PCM samples as a .wav (the one WAV writer: the CLI's renders and the studio's)."""
    with wave.open(str(wav_path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(pcm.astype(np.int16).tobytes())
    return Path(wav_path)


def load_for_render(midi_path: str | Path, max_seconds: float = MAX_RENDER_SECONDS) -> tuple[Any, bool]:
    """(the file as a `pretty_midi.PrettyMIDI` cut to its first `max_seconds`, whether anything was cut): every
    event from `max_seconds` on is dropped and held notes end there, so rendering it costs at most that long."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(midi_path))
    if pm.get_end_time() <= max_seconds:
        return pm, False
    for inst in pm.instruments:
        inst.notes = [n for n in inst.notes if n.start < max_seconds]
        for note in inst.notes:
            note.end = min(note.end, max_seconds)
        inst.pitch_bends = [b for b in inst.pitch_bends if b.time < max_seconds]
        inst.control_changes = [c for c in inst.control_changes if c.time < max_seconds]
    for name in ("time_signature_changes", "key_signature_changes", "lyrics", "text_events"):
        setattr(pm, name, [e for e in getattr(pm, name) if e.time < max_seconds])
    pm._tick_scales = [(tick, scale) for tick, scale in pm._tick_scales  # noqa: SLF001 - tempo changes: no public setter
                       if tick == 0 or pm.tick_to_time(tick) < max_seconds]
    return pm, True


def clipped_copy(midi_path: str | Path, folder: str | Path, max_seconds: float = MAX_RENDER_SECONDS
                 ) -> tuple[Path, bool]:
    """`midi_path` itself when it lasts at most `max_seconds`, else a copy cut there written into `folder`
    (for fluidsynth, which renders a file)."""
    pm, cut = load_for_render(midi_path, max_seconds)
    if not cut:
        return Path(midi_path), False
    target = Path(folder) / f".{Path(midi_path).stem}.render-{os.getpid()}.mid"
    pm.write(str(target))
    return target, True


def cut_note(cut: bool, max_seconds: float = MAX_RENDER_SECONDS) -> str:
    return f" (the first {max_seconds / 60:g} minutes only: longer previews are not rendered)" if cut else ""


def synthesize_wav(midi_path: str | Path, wav_path: str | Path, sample_rate: int = 22050) -> Path:
    """Sine-wave rendering with pretty_midi, 16-bit mono (at most `MAX_RENDER_SECONDS`)."""
    pm, _ = load_for_render(midi_path)
    audio = pm.synthesize(fs=sample_rate)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    pcm = (audio / peak * 0.9 * 32767).astype(np.int16) if peak > 0 else np.zeros(sample_rate, np.int16)
    return write_wav(wav_path, pcm, sample_rate)


def render_wav(midi_path: str | Path, wav_path: str | Path, soundfont: str | Path | None = None,
               sample_rate: int = 44100) -> tuple[Path, str]:
    """Render `midi_path` to `wav_path`; returns (path, a one-line note on how it was rendered)."""
    binary = shutil.which("fluidsynth")
    font = find_soundfont(soundfont)
    if binary and font:
        source, cut = clipped_copy(midi_path, Path(wav_path).parent)
        try:
            cmd = [binary, "-ni", "-q", "-F", str(wav_path), "-r", str(sample_rate), str(font), str(source)]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        finally:
            if cut:
                source.unlink(missing_ok=True)
        if result.returncode == 0 and Path(wav_path).is_file():
            return Path(wav_path), f"rendered with fluidsynth ({font.name}){cut_note(cut)}"
        why = f"fluidsynth failed ({' '.join((result.stderr or result.stdout).split())[:200]})"
    elif not binary:
        why = "fluidsynth not found on PATH"
    else:
        why = "no soundfont found (pass soundfont=/path/to/font.sf2 or set MUSICGEN_SOUNDFONT)"
    synthesize_wav(midi_path, wav_path, sample_rate=22050)
    return Path(wav_path), f"{why}: wrote a plain sine-wave preview instead{cut_note(load_for_render(midi_path)[1])}"
