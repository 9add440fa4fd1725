"""Causal linear attention kernels (no modules, no parameters): the parallel, chunked form
(:mod:`.chunk`, training and prompt prefill) and the recurrent form (:mod:`.recurrent`, generation);
optional backends for the parallel form: :mod:`.fast_transformers` and :mod:`.fla` (Triton, CUDA).

Both take an initial state and return the final one, the (B, H, F, D+1) tensor
S = sum_j gamma^(i-j) k_j [v_j, 1]^T, so a prompt prefilled in chunks continues token by token and a
stepped sequence can be continued in chunks.
"""

from .chunk import causal_linear_attention, chunked_causal_attention
from .fast_transformers import FastTransformersMissing, require_fast_transformers
from .fla import FlaMissing, FlaUnsupported, fla_available, require_fla
from .recurrent import linear_attention_step, linear_attention_step_
from .utils import EPS, resolve_chunk_size

__all__ = [
    "EPS",
    "FastTransformersMissing",
    "FlaMissing",
    "FlaUnsupported",
    "causal_linear_attention",
    "chunked_causal_attention",
    "fla_available",
    "linear_attention_step",
    "linear_attention_step_",
    "require_fast_transformers",
    "require_fla",
    "resolve_chunk_size",
]
