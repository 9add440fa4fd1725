"""One pre-LayerNorm Transformer block (attention, the optional local window, feed-forward), in its parallel,
generic recurrent and lean recurrent forms (:mod:`.lean`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import AttentionStepPlan, CausalSelfAttention, LayerNoise
from .config import ModelConfig
from .lean import TransposedWeights, linear_t
from .local_attention import LocalAttention, LocalStepPlan

__all__ = ["Block", "BlockStepPlan"]


class Block(nn.Module):
    """Pre-LayerNorm block: x + drop(attn(ln(x))), then x + drop(ff(ln(x))). Pre-LN keeps deep
    stacks (24 layers in the paper config) trainable without warm-up tricks."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, cfg.n_heads, cfg.attention, cfg.pe)
        att = cfg.attention
        #: the exact softmax window beside the attention (``attention.local_window``), or None
        self.local = LocalAttention(d, att.local_heads, cfg.head_dim, att.local_window) if att.local_window else None
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.d_ff), nn.GELU(), nn.Linear(cfg.d_ff, d))
        self.drop = nn.Dropout(cfg.dropout)

    def residual_projections(self) -> tuple[nn.Linear, ...]:
        """The Linear layers that write into the residual stream (scaled at initialisation)."""
        return (self.attn.proj, self.ff[2]) + ((self.local.proj,) if self.local is not None else ())

    def forward(self, x: Tensor, codes, noise: LayerNoise, return_state: bool = False, initial: object | None = None,
                start: int = 0):
        """``initial``: the state :meth:`forward` returned for the tokens before x, which start at ``start``."""
        h = self.ln1(x)
        attn_initial, local_prefix = initial if (initial is not None and self.local is not None) else (initial, None)
        a = self.attn(h, codes, noise, return_state=return_state, initial=attn_initial)
        state = None
        if return_state:
            a, state = a
        if self.local is not None:
            la = self.local(h, return_state=return_state, prefix=local_prefix, start=start)
            if return_state:
                la, local_state = la
                state = (state, local_state)
            a = a + la
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.ln2(x)))
        return (x, state) if return_state else x

    def init_cache(self, batch_size: int, device: torch.device, capacity: int, prefix: object | None = None,
                   position: int = 0) -> dict:
        """The block's recurrent cache: the attention's, plus the local window's ring buffer ('lk', 'lv')."""
        if self.local is None:
            return self.attn.init_cache(batch_size, device, capacity, prefix=prefix)
        attn_prefix, local_prefix = prefix if prefix is not None else (None, None)  # type: ignore[misc]
        cache = self.attn.init_cache(batch_size, device, capacity, prefix=attn_prefix)
        cache.update(self.local.init_cache(batch_size, device, local_prefix, position))
        return cache

    def step(self, x: Tensor, codes, noise: LayerNoise, cache: dict, position: int) -> tuple[Tensor, dict]:
        h = self.ln1(x)
        a, new_cache = self.attn.step(h, codes, noise, cache)
        if self.local is not None:
            a = a + self.local.step(h, cache, position)  # the ring buffer is updated in place
            new_cache = {**new_cache, "lk": cache["lk"], "lv": cache["lv"]}
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.ln2(x))), new_cache

    def lean_step_fits(self, cache: dict, device: torch.device) -> bool:
        """Whether this block has a lean step (linear attention) that can update ``cache`` in place."""
        if not (self.attn.has_lean_step and self.attn.lean_step_fits(cache, device)):
            return False
        if self.local is None:
            return True
        return all(cache[key].dtype == torch.float32 and cache[key].is_contiguous() and cache[key].device == device
                   for key in ("lk", "lv"))

    @torch.no_grad()
    def step_plan(self, noise: LayerNoise, cache: dict, weights_t: TransposedWeights,
                  spe_filters: Tensor | None = None) -> "BlockStepPlan":
        """The lean step of this block for one generated batch (eval, no dropout; see :mod:`.lean`)."""
        ff1, act, ff2 = self.ff[0], self.ff[1], self.ff[2]
        return BlockStepPlan(
            ln1=(self.ln1.weight, self.ln1.bias, self.ln1.eps),
            attn=self.attn.step_plan(noise, cache, weights_t, spe_filters),
            ln2=(self.ln2.weight, self.ln2.bias, self.ln2.eps),
            ff1_w=weights_t(ff1.weight), ff1_b=ff1.bias, ff2_w=weights_t(ff2.weight), ff2_b=ff2.bias,
            gelu=getattr(act, "approximate", "none"),
            local=None if self.local is None else self.local.step_plan(cache, weights_t),
        )


@dataclass
class BlockStepPlan:
    """One block's lean step: x + attn(ln1(x)), then x + ff(ln2(x)), functional calls only."""

    ln1: tuple[Tensor, Tensor, float]
    attn: AttentionStepPlan
    ln2: tuple[Tensor, Tensor, float]
    ff1_w: Tensor  # transposed weights (in, out)
    ff1_b: Tensor | None
    ff2_w: Tensor
    ff2_b: Tensor | None
    gelu: str
    local: LocalStepPlan | None = None

    def __call__(self, x: Tensor, position: int | Tensor, rotation: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``rotation``: the local windows' rotary factors at ``position`` (:meth:`LocalStepPlan.rotation`)."""
        width = (x.shape[1],)
        h = F.layer_norm(x, width, *self.ln1[:2], self.ln1[2])
        a = self.attn(h)
        if self.local is not None:
            a = a + self.local(h, int(position), rotation or self.local.rotation(int(position)))
        x = x + a
        y = F.layer_norm(x, width, *self.ln2[:2], self.ln2[2])
        y = F.gelu(linear_t(y, self.ff1_w, self.ff1_b), approximate=self.gelu)
        return x + linear_t(y, self.ff2_w, self.ff2_b)
