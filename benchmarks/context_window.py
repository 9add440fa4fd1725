"""Does a longer context help or hurt past the training length? Full context vs a sliding window.

evaluate.py scores each test song's first N tokens in one pass: the target at song position p sees all
p earlier tokens. If NLL rises past the training length L, two explanations compete: (a) the later
parts of songs are harder, or (b) the model handles contexts longer than it was trained on badly
(with linear attention every query's normaliser sums over all earlier keys, so long contexts dilute
the attention). This script separates them by scoring the *same* targets again with a bounded
context: crops of W + S tokens starting every S tokens, of which only the last S targets are scored,
so every target sees between W and W + S - 1 tokens (W = L by default: inside the training length).

    python -m benchmarks.context_window [--checkpoint checkpoints/musicgen-small.pt] [--length 2048]
                                        [--window 512] [--stride 256]

Prints NLL per song-position bucket for both and writes benchmarks/results/context_window.json.
Same SPE / random-feature seed for every forward.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F


from benchmarks.common import print_table, write_results
from musicgen.data import SequentialCrops
from musicgen.evaluation.eval_cache import open_eval_cache
from musicgen.inference import load_model


@torch.no_grad()
def score(model, tokens: torch.Tensor, begin: int, end: int, first: int, seed: int) -> np.ndarray:
    """NLL of targets tokens[first+1 .. end] given inputs tokens[begin .. end-1]; (B, end - first)."""
    g = torch.Generator().manual_seed(seed)
    inputs, targets = tokens[:, begin:end], tokens[:, begin + 1 : end + 1]
    nll = F.cross_entropy(model(inputs, generator=g).float().transpose(1, 2), targets, reduction="none")
    return nll[:, first - begin :].numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default="checkpoints/musicgen-small.pt")
    p.add_argument("--length", type=int, default=2048, help="song positions scored: [0, length)")
    p.add_argument("--window", type=int, default=None, help="bounded context W (default: the training length)")
    p.add_argument("--stride", type=int, default=256, help="S: targets scored per crop")
    p.add_argument("--split", default="test")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()

    loaded = load_model(args.checkpoint)
    model, vocab, ckpt = loaded.model, loaded.vocab, loaded.checkpoint
    train_len = int(ckpt.train_seq_len or ckpt.config["train"]["seq_len"])
    window = args.window or train_len
    cache = open_eval_cache(ckpt.config, vocab)
    crops = SequentialCrops(cache, args.split, args.length, first_only=True)
    songs = [crops[i] for i in range(len(crops)) if crops[i].numel() == args.length + 1]
    print(f"{len(songs)} {args.split} songs with >= {args.length + 1} tokens; training length {train_len}, "
          f"window {window}, stride {args.stride}")
    full = np.zeros((len(songs), args.length))
    windowed = np.full((len(songs), args.length), np.nan)
    for b in range(0, len(songs), args.batch_size):
        tokens = torch.stack(songs[b : b + args.batch_size])
        full[b : b + len(tokens)] = score(model, tokens, 0, args.length, 0, args.seed)
        for first in range(window, args.length, args.stride):
            end = min(first + args.stride, args.length)
            windowed[b : b + len(tokens), first:end] = score(model, tokens, first - window, end, first, args.seed)

    edges = sorted({window, args.length, *(m * train_len for m in (2, 4, 8, 16) if window < m * train_len < args.length)})
    rows, out = [], {}
    for a, z in zip(edges[:-1], edges[1:]):
        f, w = float(full[:, a:z].mean()), float(np.nanmean(windowed[:, a:z]))
        rows.append([f"[{a},{z})", f"{f:.3f}", f"{w:.3f}", f"{f - w:+.3f}"])
        out[f"[{a},{z})"] = {"full_context": f, "windowed": w}
    print_table(["song positions", "full context", f"context {window}..{window + args.stride - 1}",
                 "full - windowed"], rows)
    write_results("context_window", {"checkpoint": args.checkpoint, "train_len": train_len, "window": window,
                                     "stride": args.stride, "songs": len(songs), "buckets": out})


if __name__ == "__main__":
    main()
