"""The likelihood part of evaluate: model and unigram NLL by position bucket, [0,L), [L/2,L), [L,2L), ..."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .eval_cache import split_songs
from .likelihood import NATS_PER_BIT, PositionNLL, extrapolation_edges, position_nll
from .unigram import unigram_log_probs, unigram_position_nll


def _bucket_counts(result: PositionNLL, edges: Sequence[int]) -> dict[str, int]:
    return {f"[{a},{b})": int(result.count[a:b].sum()) for a, b in zip(edges[:-1], edges[1:])}


@dataclass
class LikelihoodReport:
    """NLL of the model and of the unigram baseline on the same targets (nats/token unless said)."""

    train_len: int
    length_factor: int
    split: str
    n_songs: int
    model: PositionNLL
    unigram: PositionNLL | None

    @property
    def edges(self) -> list[int]:
        """[0, L, 2L, 4L, ...]: the buckets of the machine-readable line."""
        return extrapolation_edges(self.train_len, self.length_factor)

    @property
    def buckets(self) -> dict[str, float]:
        return self.model.buckets(self.edges)

    @property
    def reference_bucket(self) -> str:
        return f"[{self.train_len // 2},{self.train_len})"

    def all_buckets(self, which: str = "model") -> dict[str, float]:
        """[0,L), [L/2,L), [L,2L), [2L,4L), ... for the model or the unigram baseline."""
        result = self.model if which == "model" else self.unigram
        if result is None:
            return {}
        out = {f"[0,{self.train_len})": result.bucket(0, self.train_len),
               self.reference_bucket: result.bucket(self.train_len // 2, self.train_len)}
        out.update(result.buckets(self.edges))
        return out

    @property
    def extrapolation_ratio(self) -> float:
        """NLL of the last bucket / NLL in [L/2, L): > 1 means the model gets worse past its training length."""
        last = self.buckets[list(self.buckets)[-1]]
        ref = self.model.bucket(self.train_len // 2, self.train_len)
        return last / ref if ref and math.isfinite(ref) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        model_b = self.all_buckets("model")
        uni_b = self.all_buckets("unigram")
        counts = _bucket_counts(self.model, [0, self.train_len // 2] + self.edges[1:])
        counts[f"[0,{self.train_len})"] = int(self.model.count[: self.train_len].sum())
        return {
            "units": "nats per token (bits = nats / ln 2); positions are target positions from the song start",
            "split": self.split, "n_songs": self.n_songs, "train_len": self.train_len,
            "length_factor": self.length_factor, "crop_len": self.train_len * self.length_factor,
            "n_targets": int(self.model.count.sum()),
            "nll_nats": self.model.mean, "nll_bits": self.model.mean / NATS_PER_BIT,
            "unigram_nll_nats": self.unigram.mean if self.unigram else None,
            "unigram_nll_bits": self.unigram.mean / NATS_PER_BIT if self.unigram else None,
            "by_position_nats": model_b,
            "by_position_bits": {k: v / NATS_PER_BIT for k, v in model_b.items()},
            "unigram_by_position_nats": uni_b,
            "targets_by_position": {k: counts.get(k, 0) for k in model_b},
            "extrapolation_ratio": self.extrapolation_ratio,
            "per_position_nll_nats": [None if c == 0 else float(s / c)
                                      for s, c in zip(self.model.nll_sum, self.model.count)],
            "per_position_count": self.model.count.tolist(),
        }


def likelihood_report(model: Any, cache: Any, train_len: int, *, split: str = "test", length_factor: int = 4,
                      batch_size: int = 4, device: str = "cpu", max_files: int | None = None, seed: int = 1234,
                      unigram: bool = True, progress: bool = False) -> LikelihoodReport:
    """Model and unigram NLL by position on the first `length_factor * train_len` tokens of each song.

    Crops start at each song's start (`SequentialCrops(first_only=True)`), so position p really is "p tokens
    into the piece": the curve past `train_len` is the model extrapolating beyond anything it was trained on.
    """
    from ..data import SequentialCrops

    songs = split_songs(cache, split, max_files)
    dataset = SequentialCrops(cache, split, train_len * length_factor, first_only=True, max_songs=len(songs))
    pad = cache.vocab.pad_id
    result = position_nll(model, dataset, batch_size, device, pad_id=pad, seed=seed, progress=progress)
    uni = unigram_position_nll(unigram_log_probs(cache, "train"), dataset, pad) if unigram else None
    return LikelihoodReport(int(train_len), int(length_factor), split, len(songs), result, uni)
