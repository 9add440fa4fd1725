"""Feature-map kernels: phi(x) for the parallel form (autograd Functions with hand-written backwards,
the maps are memory-bound) and the one-step forms of the generation hot path.

The step forms take queries and keys stacked on the first axis, x (2H, B, dim) = [q ; k] per head, and
return (phi(q), phi(k)), each (H, B, F) (views of one buffer: the lean attention step reads them in place).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["elu_plus_one", "positive_random_features", "elu_features_step", "performer_features_step"]


class _EluPlusOne(torch.autograd.Function):
    """elu(x) + 1 into a fresh contiguous tensor, with the derivative read off the output.

    d/dx = 1 for x > 0 (where y = x + 1 > 1) and exp(x) = y for x <= 0 (where y <= 1), so
    dy/dx = min(y, 1): only y is kept, and the attention kernel keeps it anyway. The contiguous
    output spares the kernel a copy of its (usually transposed) input; the in-place steps spare
    a pass over a (B, H, L, F) tensor each (this map is memory-bound).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        y = torch.empty(x.shape, dtype=x.dtype, device=x.device).copy_(x)
        F.elu(y, inplace=True).add_(1.0)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return dy * y.clamp(max=1.0)


class _PositiveRandomFeatures(torch.autograd.Function):
    """phi(x) = exp(W x - |x|^2 / (2 sqrt(dim)) - log(m) / 2), W pre-scaled by dim^-1/4.

    Queries are stabilised by their own max over features (a per-query constant that cancels
    in the attention ratio, and is causal); keys are not (a per-key shift would change the
    weights; their exponent is bounded by |w|^2/2, which float32 holds). The gradient treats
    the query's stabiliser like the key's shift s(x) = |x|^2 / (2 sqrt(dim)) + log(m) / 2
    (exact, because the difference is a per-query constant that cancels).
    Written by hand because the map is memory-bound: forward = one matmul + two in-place passes
    over the (B, H, L, m) output; backward, with y kept: g = dy * y, dx = g W - (sum_m g) x / sqrt(dim)
    (one matmul, two passes), where autograd took twice as many passes.
    """

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, is_query: bool) -> Tensor:
        dim, m = x.shape[-1], w.shape[1]
        logits = torch.matmul(x, w.transpose(-1, -2).unsqueeze(0))  # (B, H, L, m), contiguous
        if is_query:
            shift = logits.amax(-1, keepdim=True)
        else:
            shift = x.square().sum(-1, keepdim=True).mul_(0.5 * dim**-0.5).add_(0.5 * math.log(m))
        y = logits.sub_(shift).exp_()
        ctx.save_for_backward(x, w, y)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, w, y = ctx.saved_tensors
        g = dy * y
        dx = torch.matmul(g, w.unsqueeze(0))  # (B, H, L, dim)
        dx.addcmul_(x, g.sum(-1, keepdim=True), value=-(x.shape[-1] ** -0.5))
        return dx, None, None


def elu_plus_one(x: Tensor) -> Tensor:
    """elu(x) + 1, a fresh contiguous tensor (see :class:`_EluPlusOne`)."""
    return _EluPlusOne.apply(x)


def positive_random_features(x: Tensor, w: Tensor, is_query: bool) -> Tensor:
    """FAVOR+ features of x (B, H, L, dim) with w (H, m, dim) pre-scaled by dim^-1/4 -> (B, H, L, m)."""
    return _PositiveRandomFeatures.apply(x, w, is_query)


def elu_features_step(x: Tensor) -> tuple[Tensor, Tensor]:
    """x (2H, B, dim) -> elu(x) + 1 for queries and keys, each (H, B, dim)."""
    h = x.shape[0] // 2
    feats = F.elu(x).add_(1.0)
    return feats[:h], feats[h:]


def performer_features_step(x: Tensor, w: Tensor, key_c1: float, key_c2: float) -> tuple[Tensor, Tensor]:
    """x (2H, B, dim), w (2H, dim, m) (the projection scaled by dim^-1/4, twice) -> FAVOR+ features (H, B, m)
    of queries (stabilised by their max) and keys (shifted by key_c1 |x|^2 + key_c2), as in the parallel form."""
    h = x.shape[0] // 2
    logits = torch.bmm(x, w)  # (2H, B, m)
    lq, lk = logits[:h], logits[h:]
    fq = lq.sub_(lq.amax(-1, keepdim=True)).exp_()
    sq = x[h:].square().sum(-1, keepdim=True)
    fk = lk.sub_(sq, alpha=key_c1).sub_(key_c2).exp_()
    return fq, fk
