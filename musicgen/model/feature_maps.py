"""Feature maps phi for linear attention: phi(q)·phi(k) approximates a positive similarity kernel.

* ``elu``: phi(x) = elu(x) + 1 (Katharopoulos et al., 2020). Deterministic, cheap, same dim.
* ``performer``: FAVOR+ positive random features (Choromanski et al., 2021), an unbiased
  estimate of exp(q·k / sqrt(dim)), i.e. of softmax attention. Features are random: they are
  redrawn during training with probability ``redraw_prob`` per forward (keeps the model from
  over-fitting one draw) and kept fixed for a whole sequence at generation.

Feature maps always compute in float32 (or float64): performer features can reach ~exp(|w|^2/2),
which overflows fp16, so they are evaluated with autocast disabled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .noise import randn

__all__ = ["FeatureMap", "EluFeatureMap", "PerformerFeatureMap", "build_feature_map", "orthogonal_gaussian"]


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class FeatureMap(nn.Module):
    """Interface: ``draw`` the (optional) random parameters of one sequence, then apply them."""

    n_features: int

    def sample(self, generator: torch.Generator | None, device: torch.device, training: bool) -> Tensor | None:
        """Random parameters to use for one forward (None for deterministic maps)."""
        return None

    def forward(self, x: Tensor, features: Tensor | None, is_query: bool) -> Tensor:  # pragma: no cover
        raise NotImplementedError


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


class EluFeatureMap(FeatureMap):
    """phi(x) = elu(x) + 1: positive, so the attention normaliser never vanishes."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.n_features = in_dim

    def forward(self, x: Tensor, features: Tensor | None, is_query: bool) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return _EluPlusOne.apply(x.to(_compute_dtype(x)))


def orthogonal_gaussian(
    n_heads: int, n_rows: int, n_cols: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """(n_heads, n_rows, n_cols) random matrix whose rows are orthogonal within blocks of n_cols.

    Orthogonal random features lower the variance of the FAVOR+ estimate; rows are rescaled
    by chi-distributed norms so each row is marginally N(0, I) as the estimator requires.
    """
    n_blocks = math.ceil(n_rows / n_cols)
    g = randn((n_heads, n_blocks, n_cols, n_cols), generator, device)
    q, _ = torch.linalg.qr(g)  # columns orthonormal
    w = q.transpose(-1, -2).reshape(n_heads, n_blocks * n_cols, n_cols)[:, :n_rows]
    norms = randn((n_heads, n_rows, n_cols), generator, device).norm(dim=-1, keepdim=True)
    return w * norms


class PerformerFeatureMap(FeatureMap):
    """FAVOR+ positive random features: phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(m), x' = x dim^-1/4.

    ``features`` (buffer, (heads, m, dim)) holds the current draw so that training can resume
    with the same features and eval without a generator is deterministic.
    """

    def __init__(self, n_heads: int, in_dim: int, n_features: int, redraw_prob: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.in_dim = in_dim
        self.n_features = n_features
        self.redraw_prob = float(redraw_prob)
        self.register_buffer(
            "features", orthogonal_gaussian(n_heads, n_features, in_dim, None, torch.device("cpu"))
        )

    def draw(self, generator: torch.Generator | None, device: torch.device) -> Tensor:
        return orthogonal_gaussian(self.n_heads, self.n_features, self.in_dim, generator, device)

    def sample(self, generator: torch.Generator | None, device: torch.device, training: bool) -> Tensor:
        """Training: redraw (and store) with probability ``redraw_prob``; otherwise reuse the buffer.

        Eval / generation: a generator means "this sequence gets its own draw" (not stored), no
        generator means "use the stored draw" (deterministic evaluation).
        """
        if training:
            dev = generator.device if generator is not None else "cpu"
            coin = torch.rand((), generator=generator, device=dev).item()
            if coin < self.redraw_prob:
                self.features.copy_(self.draw(generator, device))
            return self.features
        if generator is not None:
            return self.draw(generator, device)
        return self.features

    def forward(self, x: Tensor, features: Tensor | None, is_query: bool) -> Tensor:
        """x: (B, H, L, dim) -> (B, H, L, m), positive (see :class:`_PositiveRandomFeatures`)."""
        assert features is not None
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = _compute_dtype(x)
            w = features.to(dtype) * self.in_dim**-0.25  # (H, m, dim): the dim^-1/4 scale folded in
            return _PositiveRandomFeatures.apply(x.to(dtype), w, bool(is_query))


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


def build_feature_map(kind: str, n_heads: int, in_dim: int, n_features: int, redraw_prob: float) -> FeatureMap:
    if kind == "elu":
        return EluFeatureMap(in_dim)
    if kind == "performer":
        return PerformerFeatureMap(n_heads, in_dim, n_features, redraw_prob)
    raise ValueError(f"unknown attention.feature_map {kind!r} (expected 'elu' or 'performer')")
