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

import numpy as np

from ..config import UserError

RENDER_CHOICES = ("none", "wav")
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


def synthesize_wav(midi_path: str | Path, wav_path: str | Path, sample_rate: int = 22050) -> Path:
    """Sine-wave rendering with pretty_midi, 16-bit mono."""
    import pretty_midi

    audio = pretty_midi.PrettyMIDI(str(midi_path)).synthesize(fs=sample_rate)
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    pcm = (audio / peak * 0.9 * 32767).astype(np.int16) if peak > 0 else np.zeros(sample_rate, np.int16)
    return write_wav(wav_path, pcm, sample_rate)


def render_wav(midi_path: str | Path, wav_path: str | Path, soundfont: str | Path | None = None,
               sample_rate: int = 44100) -> tuple[Path, str]:
    """Render `midi_path` to `wav_path`; returns (path, a one-line note on how it was rendered)."""
    binary = shutil.which("fluidsynth")
    font = find_soundfont(soundfont)
    if binary and font:
        cmd = [binary, "-ni", "-q", "-F", str(wav_path), "-r", str(sample_rate), str(font), str(midi_path)]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if result.returncode == 0 and Path(wav_path).is_file():
            return Path(wav_path), f"rendered with fluidsynth ({font.name})"
        why = f"fluidsynth failed ({' '.join((result.stderr or result.stdout).split())[:200]})"
    elif not binary:
        why = "fluidsynth not found on PATH"
    else:
        why = "no soundfont found (pass soundfont=/path/to/font.sf2 or set MUSICGEN_SOUNDFONT)"
    synthesize_wav(midi_path, wav_path, sample_rate=22050)
    return Path(wav_path), f"{why}: wrote a plain sine-wave preview instead"
