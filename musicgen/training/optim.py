"""AdamW parameter groups: weight matrices, other weights, and the positional parameters.

Why a group of their own for the positional parameters (SPE frequencies, phases, gains, gates,
ConvSPE filters, attention decay rates): the shipped H200 model's SPE parameters never left their
initialisation. They are 3-D tensors, so the old rule "decay every tensor with dim >= 2" pulled them
back towards zero, and at the network's learning rate Adam moves each of them by at most ~lr per step
(a few hundred steps of consistent sign to move a frequency logit by 0.1). They are few (a few thousand
numbers), each controls the attention of a whole head/feature, and they need to travel far (a time
constant from 16 to 512 tokens is a factor 32), so they get no weight decay and ``train.pe_lr_scale``
times the learning rate.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..inference.parameters import positional_names

__all__ = ["make_optimizer"]


def _groups(named: Iterable[tuple[str, nn.Parameter]], positional_set: set[str]) -> tuple[list, list, list]:
    matrices, others, positional = [], [], []
    for name, p in named:
        if not p.requires_grad:
            continue
        if name in positional_set:
            positional.append(p)
        elif p.dim() >= 2:
            matrices.append(p)
        else:
            others.append(p)
    return matrices, others, positional


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   pe_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW: weight decay on weight matrices only; positional parameters without decay at
    ``pe_lr_scale`` x lr (the scheduler's warm-up and cosine apply to every group alike)."""
    if pe_lr_scale <= 0:
        raise ValueError(f"train.pe_lr_scale={pe_lr_scale}: must be > 0")
    matrices, others, positional = _groups(model.named_parameters(), positional_names(model))
    groups = [{"params": matrices, "weight_decay": weight_decay, "name": "matrices"},
              {"params": others, "weight_decay": 0.0, "name": "other"}]
    if positional:
        groups.append({"params": positional, "weight_decay": 0.0, "lr": lr * pe_lr_scale, "name": "positional"})
    return torch.optim.AdamW(groups, lr=lr, betas=betas)
