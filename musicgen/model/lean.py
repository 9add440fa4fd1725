"""Shared pieces of the lean recurrent step (generation hot path), used by every module's ``step_plan``.

At batch 1 a generation step is a few hundred tiny ops: the time is the per-op overhead, not arithmetic.
So each module that takes part (:class:`~.block.Block`, :class:`~.attention.CausalSelfAttention`,
:class:`~.spe.SPEFilter`, :class:`~.spe.SineSPE`, the feature maps) gathers, once per generated batch,
everything that does not change from one token to the next into a *plan* of its own, and the step runs
~25 fused, functional ops per layer (no ``nn.Module.__call__``), updating the attention states in place.
:meth:`MusicTransformer.step <.transformer.MusicTransformer.step>` composes the plans; the generic path
(``Block.step`` and friends) computes the same maths with different float rounding only, and the parity
tests compare both against the parallel form.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["TransposedWeights", "linear_t", "autocast_on", "parameter_versions"]


def autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - older torch
        return torch.is_autocast_enabled()


def parameter_versions(params: list[Tensor]) -> tuple[int, ...]:
    """Version counters: they change when a parameter is modified in place (optimizer step, load_state_dict)."""
    return tuple(p._version for p in params)  # noqa: SLF001 - torch exposes no public counter


def linear_t(x: Tensor, w_t: Tensor, bias: Tensor | None) -> Tensor:
    """x @ W^T + b with W^T stored row-major (see :class:`TransposedWeights`)."""
    return torch.mm(x, w_t) if bias is None else torch.addmm(bias, x, w_t)


class TransposedWeights:
    """Contiguous transposed copies (in, out) of a model's Linear weights (and its token embedding).

    At batch 1 a Linear is a matrix-vector product bound by reading the weight; x @ W^T with W^T stored
    row-major streams it contiguously and runs ~2x faster on CPU than ``F.linear`` (same products,
    summation order may differ). One table per model, shared by all the sequences being generated;
    :meth:`refresh` rebuilds it when a parameter changed.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._table: dict[int, Tensor] = {}

    def refresh(self, model: nn.Module, embed: Tensor, params: list[Tensor], versions: tuple[int, ...]) -> "TransposedWeights":
        key = (versions, tuple(id(p) for p in params))
        if self._key != key:
            table = {}
            for mod in model.modules():
                if isinstance(mod, nn.Linear):
                    table[id(mod.weight)] = mod.weight.detach().t().contiguous()
            table[id(embed)] = embed.detach().t().contiguous()
            self._key, self._table = key, table
        return self

    def __call__(self, weight: Tensor) -> Tensor:
        return self._table[id(weight)]
