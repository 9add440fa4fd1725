"""The drift part of evaluate: long generations (EOS off) and their music statistics window by window."""

from __future__ import annotations

from ..generation.sampling import SamplingConfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .drift import windowed_statistics
from .windows import WindowDecoder


@dataclass
class DriftReport:
    """Per-sample window statistics of long generations, and their per-window means over samples."""

    tokens: int
    window: int
    samples: list[list[dict[str, float]]]
    seed: int
    tokens_per_second: float | None = None

    def window_means(self) -> list[dict[str, float]]:
        """Mean of each statistic over samples, window by window (NaN-aware)."""
        from .metrics import aggregate

        n = max((len(s) for s in self.samples), default=0)
        out = []
        for w in range(n):
            rows = [s[w] for s in self.samples if len(s) > w]
            means = {k: v[0] for k, v in aggregate(rows).items()}
            out.append(means)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "window": self.window, "seed": self.seed, "n_samples": len(self.samples),
                "window_means": self.window_means(), "samples": self.samples}


def drift_report(model: Any, tokens: int, *, samples: int = 4, window: int = 1000, seed: int = 1234,
                 device: str = "auto", temperature: float = SamplingConfig.temperature,
                 top_p: float = SamplingConfig.top_p,
                 output_dir: str | Path | None = None, progress: bool = False) -> DriftReport:
    """Generate `samples` pieces of exactly `tokens` tokens (no EOS) and compute window statistics on each.

    `model`: a `LoadedModel` (evaluate passes the one it scored, so the checkpoint is loaded once), or a
    checkpoint path, loaded here on `device` (which a `LoadedModel` ignores: it stays where it is).
    """
    from ..generation import GenerateOptions, generate_with
    from ..inference import LoadedModel, load_model, resolve_checkpoint, resolve_device

    loaded = model if isinstance(model, LoadedModel) else load_model(resolve_checkpoint(model),
                                                                     str(resolve_device(device)))
    options = GenerateOptions.from_mapping(dict(
        checkpoint=str(loaded.path), tokens=int(tokens), allow_eos=False, max_tokens=int(tokens),
        num_samples=int(samples), seed=int(seed), temperature=temperature, top_p=top_p,
        output_dir=str(output_dir) if output_dir else None, name="drift", pianoroll=False, progress=progress))
    pieces = generate_with(options, log=None, loaded=loaded)
    tokenizer = loaded.tokenizer
    per_sample = []
    for piece in pieces:
        # Windows cover the `tokens` generated tokens (not the BOS prompt), so each window has `window` tokens;
        # the grammar allows a sequence to start at a Bar, which is how unconditional samples begin.
        # At the token limit generate() cuts back to the last point where the piece could close and appends EOS,
        # so a piece holds up to `tokens` tokens plus EOS; the EOS is not music and is left out.
        ids = piece.continuation_ids
        if ids and ids[-1] == tokenizer.vocab.eos_id:
            ids = ids[:-1]
        per_sample.append(windowed_statistics(ids, WindowDecoder(tokenizer, ids), window=int(window)))
    return DriftReport(int(tokens), int(window), per_sample, int(seed))
