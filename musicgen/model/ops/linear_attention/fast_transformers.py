"""Optional backend: pytorch-fast-transformers' CUDA/C++ ``causal_dot_product`` (``attention.backend``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["FastTransformersMissing", "require_fast_transformers", "fast_causal_product"]

_FAST_HINT = (
    "attention.backend=fast_transformers needs the optional package pytorch-fast-transformers: "
    "install it with `pip install .[fast]` (the `fast` extra of musicgen), or use attention.backend=torch."
)


class FastTransformersMissing(ImportError):
    """Raised when ``backend: fast_transformers`` is requested but the package is not installed."""


def require_fast_transformers():
    """Return fast_transformers' ``causal_dot_product`` or raise a clear, actionable error."""
    try:
        from fast_transformers.causal_product import causal_dot_product  # type: ignore
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise FastTransformersMissing(_FAST_HINT) from exc
    return causal_dot_product


def fast_causal_product(q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """Unnormalised causal product (B, H, L, D') and its final state sum_j k_j v_j^T (B, H, F, D')."""
    causal_dot_product = require_fast_transformers()
    num = causal_dot_product(q.contiguous(), k.contiguous(), v.contiguous())
    state = torch.einsum("bhlf,bhld->bhfd", k, v)
    return num, state

