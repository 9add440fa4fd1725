"""The lean generation step captured in a CUDA graph (``MusicTransformer.step_graphs``, CUDA only, off by default).

At batch 1 the lean step (:mod:`.lean`) is a few hundred small kernels; on a GPU their launches, not their
arithmetic, set the time (1.97 ms per token on an H200, eager). Everything the lean step touches is already
preallocated per generated batch (its :class:`~.transformer.StepPlan`: transposed weights, SPE filter buffers,
the attention states updated in place), so the whole step can be recorded once as a CUDA graph and replayed
per token with one launch. What changes per token enters through two static device buffers, the tokens and
the position (a float64 0-d tensor: the SPE phases are reduced mod 1 in float64 from it exactly as from the
Python int of the eager step).

A :class:`StepGraph` belongs to one plan (one batch, one set of caches): when the plan is rebuilt (a
parameter changed in place, the caches were replaced) the model captures a new graph. Capture warms up on a
side stream first (cuBLAS picks its kernels outside the graph) and restores the attention states afterwards,
so capturing does not advance the sequences. Any failure to capture falls back to the eager lean step for
that state (:meth:`MusicTransformer.step <.transformer.MusicTransformer.step>` warns once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = ["StepGraph", "graphs_apply"]

#: untimed eager runs on a side stream before capture (library handles and workspaces get allocated there)
WARMUP_STEPS = 2


def graphs_apply(tokens: Tensor, model: Any) -> bool:
    """Whether a graph may replace the eager lean step: CUDA tensors, and no module that reads values back to
    the host during a step (the learned absolute positions check their range with ``int(positions.max())``)."""
    from .embeddings import LearnedPositions

    if getattr(model, "cfg", None) is not None and model.cfg.attention.local_window:
        return False  # the local window's ring-buffer slot is chosen on the host
    if getattr(model, "recall", None) is not None:
        return False  # so is the recall head's
    return tokens.is_cuda and not isinstance(getattr(model, "ape", None), LearnedPositions)


class StepGraph:
    """One captured lean step: ``body(plan, tokens, position)`` recorded with static tokens / position buffers."""

    def __init__(self, plan: Any, body: Callable[[Any, Tensor, Tensor], Tensor], batch: int, device: torch.device) -> None:
        self.plan = plan
        self.batch = batch
        self.tokens = torch.zeros(batch, dtype=torch.long, device=device)
        self.position = torch.zeros((), dtype=torch.float64, device=device)
        saved = [cache["state"].clone() for cache in plan.caches]
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(WARMUP_STEPS):
                    body(plan, self.tokens, self.position)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.logits = body(plan, self.tokens, self.position)
        finally:  # the warm-up advanced the states (and a failed capture may have): undo it either way
            for cache, state in zip(plan.caches, saved):
                cache["state"].copy_(state)

    def fits(self, plan: Any, tokens: Tensor) -> bool:
        return plan is self.plan and tokens.shape == (self.batch,)

    def __call__(self, tokens: Tensor, position: int) -> Tensor:
        """Logits (B, V) for ``tokens`` at ``position``; advances the plan's states in place (a fresh tensor:
        the graph's own output buffer is overwritten by the next replay)."""
        self.tokens.copy_(tokens)
        self.position.fill_(position)
        self.graph.replay()
        return self.logits.clone()
