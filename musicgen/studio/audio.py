"""WAV rendering for the page's players: fluidsynth with a General MIDI soundfont where both are installed,
else a small built-in synthesis.

Why a synth of our own: the page must play something on a machine with neither fluidsynth nor a soundfont
(a 140 MB download), and plain sine waves (pretty_midi's `synthesize`) start and stop with clicks and sound like
test tones. The built-in voice is a few decaying harmonics with a short attack and release (roughly a plucked
or struck string, drums a noise burst): still not a piano, but it lets one judge melody, harmony and rhythm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgen.generation.render import MAX_RENDER_SECONDS, clipped_copy, cut_note, load_for_render, write_wav

#: where Debian and other distributions put General MIDI soundfonts (`apt-get install fluid-soundfont-gm`)
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
)
SAMPLE_RATE = 22050
HARMONICS = np.array([1.0, 0.5, 0.28, 0.14, 0.07])
MAX_RING_SECONDS = 3.0  # how long a held note keeps sounding, however long it is written
RELEASE_SECONDS = 0.08


@dataclass(frozen=True)
class Synth:
    """How the studio renders audio: fluidsynth with `soundfont`, or the built-in synthesis (`soundfont` None)."""

    fluidsynth: str | None
    soundfont: Path | None

    @property
    def uses_fluidsynth(self) -> bool:
        return bool(self.fluidsynth and self.soundfont)

    def describe(self) -> str:
        """One line for the page: which synthesis, and how to get the better one."""
        if self.uses_fluidsynth:
            return f"fluidsynth with the General MIDI soundfont {self.soundfont.name}"
        missing = "fluidsynth is not installed" if not self.fluidsynth else "no General MIDI soundfont was found"
        return (f"built-in synthesis (decaying harmonics; {missing}: `apt-get install fluidsynth "
                "fluid-soundfont-gm` or --soundfont gives real instruments)")


def find_synth(soundfont: str | Path | None = None) -> Synth:
    """The synthesis to use: fluidsynth on PATH + (the given soundfont, else $MUSICGEN_SOUNDFONT, else a system one)."""
    binary = shutil.which("fluidsynth")
    candidates = [soundfont] if soundfont else [os.environ.get("MUSICGEN_SOUNDFONT"), *SOUNDFONT_CANDIDATES]
    font = next((Path(c).expanduser() for c in candidates if c and Path(c).expanduser().is_file()), None)
    if soundfont and font is None:
        raise FileNotFoundError(f"soundfont {soundfont}: no such file")
    return Synth(binary, font)


def render(midi_path: str | Path, wav_path: str | Path, synth: Synth) -> str:
    """Render `midi_path` to `wav_path`; returns how it was rendered (fluidsynth failing falls back, and says so)."""
    if synth.uses_fluidsynth:
        source, cut = clipped_copy(midi_path, Path(wav_path).parent)
        try:
            cmd = [str(synth.fluidsynth), "-ni", "-q", "-F", str(wav_path), "-r", "44100", str(synth.soundfont),
                   str(source)]
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        finally:
            if cut:
                source.unlink(missing_ok=True)
        if result.returncode == 0 and Path(wav_path).is_file() and Path(wav_path).stat().st_size > 44:
            normalize(wav_path)
            return synth.describe() + cut_note(cut)
        why = " ".join((result.stderr or result.stdout).split())[:160]
        _, cut = synthesize(midi_path, wav_path)
        return f"built-in synthesis (fluidsynth failed: {why}){cut_note(cut)}"
    _, cut = synthesize(midi_path, wav_path)
    return synth.describe() + cut_note(cut)


def normalize(wav_path: str | Path, peak: float = 0.9) -> None:
    """Scale a 16-bit WAV to `peak`: fluidsynth's default gain leaves pieces at about -25 dBFS, far quieter than
    the built-in synthesis, and the page's players should sound alike whichever rendered them."""
    with wave.open(str(wav_path), "rb") as handle:
        params = handle.getparams()
        if params.sampwidth != 2:
            return
        pcm = np.frombuffer(handle.readframes(params.nframes), dtype=np.int16)
    top = int(np.abs(pcm.astype(np.int32)).max()) if pcm.size else 0
    if top == 0:
        return
    scaled = np.clip(pcm.astype(np.float64) * (peak * 32767 / top), -32768, 32767).astype(np.int16)
    with wave.open(str(wav_path), "wb") as handle:
        handle.setparams(params)
        handle.writeframes(scaled.tobytes())


def _voice(freq: float, n: int, hold: int, velocity: int, sample_rate: int) -> np.ndarray:
    t = np.arange(n) / sample_rate
    decay = 1.2 + freq / 400.0  # high notes die away faster, as on a piano
    tone = np.zeros(n)
    for k, amp in enumerate(HARMONICS, start=1):
        if freq * k < sample_rate / 2:
            tone += amp * np.exp(-decay * k * t) * np.sin(2 * np.pi * freq * k * t)
    envelope = np.minimum(1.0, t / 0.005)  # 5 ms attack: no click
    release = max(1, int(RELEASE_SECONDS * sample_rate))
    tail = np.clip((np.arange(n) - hold) / release, 0.0, 1.0)
    return tone * envelope * (1.0 - tail) * (velocity / 127.0)


def synthesize(midi_path: str | Path, wav_path: str | Path, sample_rate: int = SAMPLE_RATE,
               max_seconds: float = MAX_RENDER_SECONDS) -> tuple[Path, bool]:
    """The built-in synthesis: every note a decaying-harmonics voice (drums a noise burst), 16-bit mono WAV of at
    most `max_seconds` (a longer piece is cut there); returns (the WAV, whether it was cut)."""
    import pretty_midi

    pm, cut = load_for_render(midi_path, max_seconds)
    length = int((min(pm.get_end_time(), max_seconds) + MAX_RING_SECONDS / 2 + 0.5) * sample_rate) + 1
    audio = np.zeros(length)
    noise = np.random.default_rng(0)
    for inst in pm.instruments:
        for note in inst.notes:
            start = int(note.start * sample_rate)
            hold = max(1, int(min(note.end - note.start, MAX_RING_SECONDS) * sample_rate))
            if inst.is_drum:
                n = int(0.12 * sample_rate)
                voice = noise.standard_normal(n) * np.exp(-np.arange(n) / (0.03 * sample_rate)) * \
                    (note.velocity / 127.0) * 0.4
            else:
                n = hold + int(RELEASE_SECONDS * sample_rate)
                voice = _voice(float(pretty_midi.note_number_to_hz(note.pitch)), n, hold, note.velocity,
                               sample_rate)
            end = min(length, start + len(voice))
            audio[start:end] += voice[:end - start]
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak > 0:  # in place: one array of samples at a time
        audio *= 1.2 / peak
        np.tanh(audio, out=audio)
        audio *= 0.85 * 32767 / np.tanh(1.2)
        pcm = audio.astype(np.int16)
    else:
        pcm = np.zeros(sample_rate, np.int16)
    return write_wav(wav_path, pcm, sample_rate), cut
