"""Negative log-likelihood of token sequences, overall and by position: shared by validation and evaluate.py.

NLL is in nats per token (divide by ln 2 for bits). PAD targets are ignored. Positions count from the start of
each evaluated sequence, so with crops that start at the song start (`SequentialCrops(first_only=True)`) the
per-position curve shows how the model does at and beyond its training length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

NATS_PER_BIT = math.log(2.0)


@dataclass
class PositionNLL:
    """Per-position sums of NLL (nats) and counts of scored targets."""

    nll_sum: np.ndarray
    count: np.ndarray

    @property
    def mean(self) -> float:
        total = self.count.sum()
        return float(self.nll_sum.sum() / total) if total else float("nan")

    def bucket(self, start: int, stop: int) -> float:
        """Mean NLL over target positions [start, stop)."""
        c = self.count[start:stop].sum()
        return float(self.nll_sum[start:stop].sum() / c) if c else float("nan")

    def buckets(self, edges: list[int]) -> dict[str, float]:
        return {f"[{a},{b})": self.bucket(a, b) for a, b in zip(edges[:-1], edges[1:])}


def extrapolation_edges(train_len: int, length_factor: int) -> list[int]:
    """[0, L, 2L, 4L, ...] up to length_factor * L (the buckets evaluate.py and training report)."""
    edges = [0, train_len]
    while edges[-1] < length_factor * train_len:
        edges.append(min(edges[-1] * 2, length_factor * train_len))
    return edges


@torch.no_grad()
def position_nll(model: torch.nn.Module, dataset: Dataset, batch_size: int, device: torch.device | str,
                 pad_id: int = 0, max_batches: int | None = None, seed: int = 1234,
                 progress: bool = False) -> PositionNLL:
    """Score every item of `dataset` (LongTensors of L+1 ids) with the parallel form of `model`.

    SPE noise and random features are drawn from a generator seeded with `seed`, so the number is
    reproducible and evaluation does not disturb the training RNG.
    """
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    device = torch.device(device)
    length = dataset[0].numel() - 1 if len(dataset) else 0
    nll_sum = np.zeros(length, dtype=np.float64)
    count = np.zeros(length, dtype=np.int64)
    generator = torch.Generator(device=device).manual_seed(seed)
    # Plain batching (no DataLoader): a DataLoader would draw a seed from the global RNG, and evaluation
    # must not change the training run's random stream.
    starts = list(range(0, len(dataset), batch_size))
    if max_batches is not None:
        starts = starts[:max_batches]
    for start in tqdm(starts, desc="eval", disable=not progress, leave=False):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batch = torch.stack(items).to(device)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        logits = model(inputs, generator=generator)
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        mask = targets != pad_id
        nll_sum += (nll * mask).sum(0).double().cpu().numpy()
        count += mask.sum(0).cpu().numpy()
    model.train(was_training)
    return PositionNLL(nll_sum, count)
