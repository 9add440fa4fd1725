"""Causal linear-attention Transformer with Stochastic Positional Encoding (SPE).

Public API::

    model = build_model(model_cfg, vocab_size)       # conf/model/*.yaml content (dict / DictConfig)
    model.config                                     # plain dict, rebuild with build_model(c, c["vocab_size"])
    logits = model(tokens, generator=None)           # (B, L) -> (B, L, V)
    state = model.init_state(B, device=None, generator=None)
    logits, state = model.step(tokens_B, state)      # (B,) -> (B, V)
    logits, state = model.prefill(prompt, generator=None)   # parallel prompt, then step on
"""

from .causal_linear import FastTransformersMissing, causal_linear_attention, causal_linear_attention_naive
from .config import DEFAULTS, model_config_from
from .transformer import GenerationState, MusicTransformer, build_model

__all__ = [
    "build_model",
    "MusicTransformer",
    "GenerationState",
    "model_config_from",
    "DEFAULTS",
    "FastTransformersMissing",
    "causal_linear_attention",
    "causal_linear_attention_naive",
]
