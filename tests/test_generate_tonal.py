"""Tonal memory (musicgen/generation/tonal.py): a continuation is pulled towards the pitch classes of its prompt."""

from __future__ import annotations

from pathlib import Path

import miditoolkit
import numpy as np
import pytest
import torch

from musicgen.config import UserError
from musicgen.generation import GenerationSession, SamplingConfig, StopConfig, unconditional_prompt
from musicgen.generation.prompt import load_prompt
from musicgen.generation.tonal import TonalMemory
from musicgen.tokenizer import REMITokenizer, TokenType

from support import FixedPreferenceModel

TPB = 480
C_MAJOR = {0, 2, 4, 5, 7, 9, 11}


@pytest.fixture(scope="module")
def tokenizer() -> REMITokenizer:
    return REMITokenizer()


def _values(tokenizer: REMITokenizer) -> np.ndarray:
    span = tokenizer.vocab.ids_of_type(TokenType.PITCH)
    return np.asarray(tokenizer.vocab.values[span.start:span.stop])


def test_bias_follows_the_history_and_is_off_without_one(tokenizer: REMITokenizer) -> None:
    pitches = tokenizer.vocab.ids_of_type(TokenType.PITCH)
    memory = TonalMemory(2, pitches, _values(tokenizer), strength=0.5, half_life=1e9)
    assert memory.bias([0, 1], 2, len(tokenizer.vocab), temperature=1.0) is None  # no prompt note: no bias
    for pitch in [60, 64, 67] * 10:  # C, E, G
        memory.add_note(0, tokenizer.vocab.id_of(TokenType.PITCH, pitch))
    bias = memory.bias([0, 1], 2, len(tokenizer.vocab), temperature=1.0)
    row = bias[0, pitches.start:pitches.stop]
    assert row[60] > 0 and row[72] == row[60] and row[61] < 0  # by pitch class, any octave
    assert row[60] == pytest.approx(0.5 * np.log(12 * 11 / 42))  # strength x log(12 (c + 1) / (sum c + 12))
    assert torch.all(bias[1] == 0) and torch.all(bias[:, :pitches.start] == 0)  # other rows, other tokens
    assert memory.bias([], 2, len(tokenizer.vocab), 1.0) is None
    assert TonalMemory(1, pitches, _values(tokenizer), 0.0, 256).bias([0], 1, len(tokenizer.vocab), 1.0) is None  # off


def test_half_life_forgets(tokenizer: REMITokenizer) -> None:
    """A modulation is followed: after many notes in a new key, the old key weighs little."""
    pitches = tokenizer.vocab.ids_of_type(TokenType.PITCH)
    memory = TonalMemory(1, pitches, _values(tokenizer), strength=0.5, half_life=16)
    for _ in range(64):
        memory.add_note(0, tokenizer.vocab.id_of(TokenType.PITCH, 60))  # C
    for _ in range(64):
        memory.add_note(0, tokenizer.vocab.id_of(TokenType.PITCH, 66))  # then F#
    profile = memory.profile(0)
    assert profile[6] > 8 * profile[0]  # C weighs 0.5^4 of what it did; smoothing keeps it > 0
    assert memory.report(0)["half_life_notes"] == pytest.approx(16)


def _c_major_prompt(tmp_path: Path, tokenizer: REMITokenizer):
    midi = miditoolkit.MidiFile(ticks_per_beat=TPB)
    inst = miditoolkit.Instrument(program=0)
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    inst.notes = [miditoolkit.Note(80, scale[i % 8], i * TPB // 2, (i + 1) * TPB // 2) for i in range(8 * 8)]
    midi.instruments.append(inst)
    path = tmp_path / "c_major.mid"
    midi.dump(str(path))
    return load_prompt(path, tokenizer)


def _in_scale_share(tokenizer: REMITokenizer, results) -> float:
    vocab = tokenizer.vocab
    pitches = [int(vocab.values[t]) for r in results for t in r.ids[r.prompt_length:]
               if vocab.types[t] == TokenType.PITCH]
    assert len(pitches) > 100
    return float(np.mean([p % 12 in C_MAJOR for p in pitches]))


def test_continuation_of_a_c_major_prompt_stays_in_c_major(tokenizer: REMITokenizer, tmp_path: Path) -> None:
    """A 'model' with no idea of key (every pitch equally likely) continues a C-major scale: without the memory
    7/12 of its notes are in C major, with it most of them (the memory is the only thing that knows the key)."""
    vocab = tokenizer.vocab
    logits = torch.zeros(1, len(vocab))
    logits[0, vocab.ids_of_type(TokenType.PITCH).start:vocab.ids_of_type(TokenType.PITCH).stop] = 0.0
    for kind in (TokenType.CHORD, TokenType.TEMPO, TokenType.PROGRAM):
        logits[0, list(vocab.ids_of_type(kind))] = -9.0
    model = FixedPreferenceModel(logits)
    prompt = _c_major_prompt(tmp_path, tokenizer)
    shares = {}
    for strength in (0.0, 0.5, 1.0):
        session = GenerationSession(model, tokenizer, SamplingConfig(tonal_memory=strength),
                                    StopConfig(tokens=800, allow_eos=False), seed=3)
        results = session.run(prompt, 2, progress=False)
        shares[strength] = _in_scale_share(tokenizer, results)
        if strength:
            assert results[0].tonal_memory["biased_steps"] > 100
            profile = results[0].tonal_memory["prompt_profile"]
            assert sum(profile[pc] for pc in C_MAJOR) > 0.7
    unconditional = GenerationSession(model, tokenizer, SamplingConfig(), StopConfig(tokens=300, allow_eos=False),
                                      seed=3).run(unconditional_prompt(tokenizer), 1, progress=False)[0]
    assert unconditional.tonal_memory["biased_steps"] == 0  # nothing to remember without a prompt
    assert shares[0.0] == pytest.approx(7 / 12, abs=0.08)
    assert shares[0.5] > shares[0.0] + 0.1 and shares[1.0] > shares[0.5]


@pytest.mark.parametrize("kwargs", [{"tonal_memory": -0.1}, {"tonal_half_life": 0.5}, {"tonal_memory": "x"}])
def test_bad_tonal_options(kwargs: dict) -> None:
    with pytest.raises(UserError):
        SamplingConfig(**kwargs)
