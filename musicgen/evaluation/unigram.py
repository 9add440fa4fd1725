"""The unigram baseline: train-split token frequencies, scored on exactly the targets the model is scored on."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import UserError
from .likelihood import PositionNLL


def unigram_log_probs(cache: Any, split: str = "train", alpha: float = 1.0) -> np.ndarray:
    """log p(token) from the `split`'s token frequencies, add-`alpha` smoothed over every id but PAD.

    Smoothing keeps the baseline finite on ids the train split never used; PAD gets probability 0 (it is never
    a scored target). Raises UserError when the split is empty.
    """
    songs = cache.split(split)
    if not songs:
        raise UserError(f"{cache.dir}: the '{split}' split has no songs, so there is no unigram baseline")
    n = len(cache.vocab)
    counts = np.zeros(n, dtype=np.float64)
    for song in songs:
        counts += np.bincount(cache.song_tokens(song).astype(np.int64), minlength=n)[:n]
    pad = cache.vocab.pad_id
    counts[pad] = 0.0
    counts += alpha
    counts[pad] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum())


def unigram_position_nll(log_probs: np.ndarray, dataset: Any, pad_id: int = 0) -> PositionNLL:
    """The unigram model scored like `position_nll` scores a network: same items, targets, PAD mask."""
    length = dataset[0].numel() - 1 if len(dataset) else 0
    nll_sum = np.zeros(length, dtype=np.float64)
    count = np.zeros(length, dtype=np.int64)
    for i in range(len(dataset)):
        targets = dataset[i][1:].numpy()
        mask = targets != pad_id
        nll_sum += np.where(mask, -log_probs[targets], 0.0)
        count += mask
    return PositionNLL(nll_sum, count)
