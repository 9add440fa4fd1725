"""PyTorch datasets over a token cache: random training crops and fixed evaluation crops.

Every item is a LongTensor of `seq_len + 1` ids (inputs are `item[:-1]`, targets `item[1:]`), padded with PAD
(id 0), which the loss ignores. Training crops start at a Bar or at the song start, so the model always sees
whole bars; training item `i` depends only on (seed, i), so a resumed run sees exactly the same data (the
trainer asks for item numbers step by step rather than iterating epochs).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import Augmenter
from ..tokenizer import TokenType
from .cache import SongEntry, TokenCache
from .fim import fim_crop


def _pad(ids: np.ndarray, length: int, pad_id: int) -> torch.Tensor:
    out = np.full(length, pad_id, dtype=np.int64)
    out[: len(ids)] = ids[:length]
    return torch.from_numpy(out)


class RandomCrops(Dataset):
    """Training crops of `seq_len + 1` tokens starting at a random Bar (or song start) of the split.

    `metre_context`: a crop that starts at a Bar in the middle of a song in a metre other than the implicit 4/4
    gets that metre's TimeSig token after its first Bar (where the song's first bar has it), so that a model learns a
    corpus' metres from every crop, not only from the few that start at a song's beginning (data.crop_metre).

    `fim_rate`: this share of the crops is rearranged for fill-in-the-middle (`musicgen.data.fim`; train.fim_rate)."""

    def __init__(self, cache: TokenCache, split: str, seq_len: int, augmenter: Augmenter | None = None,
                 seed: int = 0, metre_context: bool = False, fim_rate: float = 0.0) -> None:
        songs = cache.split(split)
        if not songs:
            raise ValueError(f"{cache.dir}: the '{split}' split has no songs")
        self.cache = cache
        self.seq_len = int(seq_len)
        self.augmenter = augmenter
        self.seed = int(seed)
        self.fim_rate = float(fim_rate)
        vocab = cache.vocab
        starts, ends, metres, in_effects = [], [], [], []
        span = vocab.ranges[TokenType.TIME_SIG]
        for song in songs:
            ids = cache.song_tokens(song)
            local = np.flatnonzero((ids == vocab.bar_id) | (ids == vocab.bos_id))
            local = local[local < len(ids) - 1]
            starts.append(song.offset + local)
            ends.append(np.full(len(local), song.offset + song.length))
            # metre_context: the TimeSig in effect at each crop start (-1: the implicit 4/4, or the bar sets its own)
            in_effect = np.full(len(ids), -1, dtype=np.int64)
            if span.size:
                is_sig = (ids >= span.start) & (ids < span.stop)
                last = np.where(is_sig, np.arange(len(ids)), -1)
                last = np.maximum.accumulate(last)
                in_effect = np.where(last >= 0, ids[np.maximum(last, 0)].astype(np.int64), -1)
            in_effects.append(in_effect[local])
            metre = in_effect[local].copy() if metre_context else np.full(len(local), -1, dtype=np.int64)
            own = np.zeros(len(local), dtype=bool)  # the bar opens with its own TimeSig already
            nxt = local + 1
            ok = nxt < len(ids)
            own[ok] = (ids[nxt[ok]] >= span.start) & (ids[nxt[ok]] < span.stop)
            metre[own | (ids[local] == vocab.bos_id)] = -1
            metres.append(metre)
        self.starts = np.concatenate(starts).astype(np.int64)
        self.ends = np.concatenate(ends).astype(np.int64)
        self.metres = np.concatenate(metres).astype(np.int64)
        self.in_effect = np.concatenate(in_effects).astype(np.int64)
        self.pad_id = vocab.pad_id

    def __len__(self) -> int:
        """Number of distinct crop starts; any non-negative index is valid (each is its own random crop)."""
        return len(self.starts)

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng((self.seed, int(index)))
        j = int(rng.integers(len(self.starts)))
        start = int(self.starts[j])
        stop = min(start + self.seq_len + 1, int(self.ends[j]))
        ids = np.asarray(self.cache.tokens[start:stop], dtype=np.int64)
        if self.metres[j] >= 0:  # a crop from mid-song states its metre after its first Bar, as the song's start does
            ids = np.concatenate([ids[:1], [self.metres[j]], ids[1:self.seq_len]])
        if self.fim_rate and rng.random() < self.fim_rate:
            arranged = fim_crop(ids, self.cache.vocab, int(self.in_effect[j]), rng)
            ids = ids if arranged is None else arranged[: self.seq_len + 1]
        if self.augmenter is not None:
            ids = self.augmenter(ids, rng)
        return _pad(ids, self.seq_len + 1, self.pad_id)


class SequentialCrops(Dataset):
    """Fixed crops for evaluation: each song cut from its start into consecutive windows of `seq_len + 1`
    tokens (consecutive windows share one token, so every target is scored once). With `first_only`, only
    each song's first window: positions then count from the song start, which NLL-by-position needs."""

    def __init__(self, cache: TokenCache, split: str, seq_len: int, first_only: bool = False,
                 max_songs: int | None = None) -> None:
        songs: list[SongEntry] = cache.split(split)
        if not songs:
            raise ValueError(f"{cache.dir}: the '{split}' split has no songs")
        if max_songs:
            songs = songs[: int(max_songs)]
        self.cache = cache
        self.seq_len = int(seq_len)
        self.pad_id = cache.vocab.pad_id
        self.windows: list[tuple[int, int]] = []
        for song in songs:
            for begin in range(0, max(song.length - 1, 1), self.seq_len):
                self.windows.append((song.offset + begin, song.offset + min(begin + self.seq_len + 1, song.length)))
                if first_only:
                    break

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> torch.Tensor:
        start, stop = self.windows[index]
        return _pad(np.asarray(self.cache.tokens[start:stop], dtype=np.int64), self.seq_len + 1, self.pad_id)
