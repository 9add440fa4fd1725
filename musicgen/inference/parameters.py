"""Which of a model's parameters are positional (SPE frequencies, phases, gains, gates, ConvSPE filters,
attention decay rates): the training optimizer gives them a group of their own (`training.optim` says why),
checkpoints record where they started, exports keep them fp32, and the positional diagnostic
(`evaluation.positional`) measures how far they moved."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["POSITIONAL_MARKERS", "is_positional", "positional_parameters"]

#: substrings of parameter names that belong to positional machinery
POSITIONAL_MARKERS = ("code_generators.", ".spe.", ".decay.")


def is_positional(name: str) -> bool:
    """Whether the parameter called ``name`` (``model.named_parameters()``) is positional."""
    return any(marker in name for marker in POSITIONAL_MARKERS) or name.startswith("decay.")


def positional_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached fp32 copies of every positional parameter, by name (for diagnostics and checkpoints)."""
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters() if is_positional(name)}
