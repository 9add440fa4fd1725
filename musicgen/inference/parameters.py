"""Which of a model's parameters are positional (SPE frequencies, phases, gains, gates, ConvSPE filters,
attention decay rates): the training optimizer gives them a group of their own (`training.optim` says why),
checkpoints record where they started, exports keep them fp32, and the positional diagnostic
(`evaluation.positional`) measures how far they moved. The model says which they are
(`MusicTransformer.positional_parameter_names`, declared by the modules that own them), so renaming an
attribute cannot move a parameter to another learning rate."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["positional_names", "positional_parameters", "positional_names_of_config"]


def positional_names(model: nn.Module) -> set[str]:
    """The names (``model.named_parameters()``) of the model's positional parameters; none for a model that
    declares none."""
    names = getattr(model, "positional_parameter_names", None)
    return set(names()) if callable(names) else set()


def positional_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached fp32 copies of every positional parameter, by name (for diagnostics and checkpoints)."""
    wanted = positional_names(model)
    return {name: p.detach().float().cpu().clone() for name, p in model.named_parameters() if name in wanted}


def positional_names_of_config(model_config: Any) -> set[str]:
    """:func:`positional_names` of the model a stored config builds (on the CPU: exports read checkpoints that
    this project wrote)."""
    from ..model import build_model

    model = build_model(model_config, model_config["vocab_size"])
    return positional_names(model)
