"""Causal linear-attention Transformer with Stochastic Positional Encoding (SPE).

Public API::

    model = build_model(model_cfg, vocab_size)       # a composed conf/model preset (dict / DictConfig) or ModelConfig
    model.config                                     # plain dict, rebuild with build_model(c, c["vocab_size"])
    model.cfg                                        # the same, typed (ModelConfig)
    logits = model(tokens, generator=None)           # (B, L) -> (B, L, V)
    state = model.init_state(B, device=None, generator=None)
    logits, state = model.step(tokens_B, state)      # (B,) -> (B, V)
    logits, state = model.prefill(prompt, generator=None)   # parallel prompt, then step on
    load_preset("spe_sine_gated")                    # a conf/model preset composed as Hydra does (plain dict)

Layout: modules (parameters, randomness, per-module lean step plans) in this package; kernels (autograd
Functions, chunked and recurrent forms) in :mod:`.ops`.
"""

from .config import AttentionConfig, ModelConfig, PEConfig, load_preset, model_config_from
from .ops.linear_attention import FastTransformersMissing, causal_linear_attention
from .transformer import GenerationState, MusicTransformer, build_model

__all__ = [
    "build_model",
    "MusicTransformer",
    "GenerationState",
    "ModelConfig",
    "AttentionConfig",
    "PEConfig",
    "model_config_from",
    "load_preset",
    "FastTransformersMissing",
    "causal_linear_attention",
]
