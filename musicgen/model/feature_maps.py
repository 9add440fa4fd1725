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

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .noise import randn
from .ops.feature_maps import elu_features_step, elu_plus_one, performer_features_step, positive_random_features

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

    def step_plan(self, features: Tensor | None) -> Callable[[Tensor], tuple[Tensor, Tensor]]:  # pragma: no cover
        """The one-step form for one sequence's draw: x (2H, B, dim) = [q ; k] -> (phi(q), phi(k)), each
        (H, B, F), float32 (the lean generation step, :meth:`CausalSelfAttention.step_plan`)."""
        raise NotImplementedError


class EluFeatureMap(FeatureMap):
    """phi(x) = elu(x) + 1: positive, so the attention normaliser never vanishes."""

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.n_features = in_dim

    def forward(self, x: Tensor, features: Tensor | None, is_query: bool) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return elu_plus_one(x.to(_compute_dtype(x)))

    def step_plan(self, features: Tensor | None) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        return elu_features_step


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
        """x: (B, H, L, dim) -> (B, H, L, m), positive (see :func:`.ops.feature_maps.positive_random_features`)."""
        assert features is not None
        with torch.autocast(device_type=x.device.type, enabled=False):
            dtype = _compute_dtype(x)
            w = features.to(dtype) * self.in_dim**-0.25  # (H, m, dim): the dim^-1/4 scale folded in
            return positive_random_features(x.to(dtype), w, bool(is_query))

    def step_plan(self, features: Tensor | None) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
        """The projection of this sequence's draw, scaled by dim^-1/4 and stacked for queries and keys."""
        assert features is not None
        scale = self.in_dim**-0.25
        w = (features.to(torch.float32) * scale).transpose(-1, -2)  # (H, dim, m)
        return functools.partial(performer_features_step, w=torch.cat([w, w]).contiguous(),
                                 key_c1=0.5 * scale * scale, key_c2=0.5 * math.log(self.n_features))


def build_feature_map(kind: str, n_heads: int, in_dim: int, n_features: int, redraw_prob: float) -> FeatureMap:
    if kind == "elu":
        return EluFeatureMap(in_dim)
    if kind == "performer":
        return PerformerFeatureMap(n_heads, in_dim, n_features, redraw_prob)
    raise ValueError(f"unknown attention.feature_map {kind!r} (expected 'elu' or 'performer')")
