"""What generation carries from one token to the next: the recurrent state of a batch (:class:`GenerationState`)
and the lean step's per-batch constants (:class:`StepPlan`). Kept apart from the network
(:mod:`.transformer`) because callers hold, copy and rewind states (a planned form resumes one) without
needing the network's code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .attention import LayerNoise
from .block import BlockStepPlan
from .lean import parameter_versions

__all__ = ["GenerationState", "StepPlan"]


@dataclass
class GenerationState:
    """Recurrent state of a batch of sequences being generated.

    ``position`` is the index of the next token. For linear attention every tensor in here has a
    size independent of ``position`` (see :meth:`nbytes`); the softmax baseline holds a KV cache.
    ``step`` may update tensors in place: do not reuse a state after passing it to ``step``.
    """

    position: int
    code_states: list[Any] = field(default_factory=list)
    layer_noise: list[LayerNoise] = field(default_factory=list)
    caches: list[dict] = field(default_factory=list)
    #: per-sequence constants of the lean step (:class:`StepPlan`), built on the first step
    plan: Any = field(default=None, repr=False, compare=False)
    #: the recall head's ring buffer (:class:`~.recall.RecallMemory`), None without a recall head
    recall: Any = None
    #: the lean step captured as a CUDA graph (:class:`~.graphs.StepGraph`) when ``model.step_graphs``;
    #: False after a failed capture (this state then keeps the eager lean step)
    graph: Any = field(default=None, repr=False, compare=False)

    def nbytes(self) -> int:
        """Bytes held by tensors of the state (noise, SPE ring buffers, attention states/caches)."""
        total = 0

        def add(obj: Any) -> None:
            nonlocal total
            if isinstance(obj, Tensor):
                total += obj.numel() * obj.element_size()
            elif hasattr(obj, "nbytes") and callable(obj.nbytes):
                total += obj.nbytes()
            elif isinstance(obj, dict):
                for v in obj.values():
                    add(v)
            elif isinstance(obj, (list, tuple)):
                for v in obj:
                    add(v)
            elif dataclasses.is_dataclass(obj):
                for f in dataclasses.fields(obj):
                    add(getattr(obj, f.name))

        add(self.code_states)
        add(self.layer_noise)
        add(self.caches)
        add(self.recall)
        return total


@dataclass
class StepPlan:
    """Per-batch constants of the lean step, one plan per module (:meth:`MusicTransformer.step`).

    Rebuilt when a parameter was modified in place (its version counter moved), when inference mode
    changed, or when the state's caches were replaced (e.g. repeated across a batch after a prefill).
    """

    params: list[Tensor]  # the model's parameters, and their version counters at build time
    versions: tuple[int, ...]
    inference: bool
    embed: Tensor  # (V, d_model) token embedding pre-multiplied by sqrt(d_model)
    codes: list[Any]  # per code generator: its plan (e.g. :class:`~.spe.SineStepPlan`)
    blocks: list[BlockStepPlan]
    caches: list[dict]  # the caches the block plans update in place
    lnf: tuple[Tensor, Tensor, float]
    head: Tensor  # (d_model, V)
    #: the recall head's query and key projections, transposed (None without a recall head)
    recall: tuple[Tensor, Tensor] | None = None
    #: a local window's plan, whose rotary factors serve every layer's window (None without local windows)
    rotary: Any = None

    def is_current(self, state: "GenerationState") -> bool:
        return (self.versions == parameter_versions(self.params)
                and self.inference == torch.is_inference_mode_enabled()
                and len(self.caches) == len(state.caches)
                and all(a is b for a, b in zip(self.caches, state.caches)))
