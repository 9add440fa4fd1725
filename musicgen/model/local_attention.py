"""A short exact softmax window beside the linear attention: recall of the last few bars.

Why: to restate a passage a model must find where the current context happened before and copy what
followed (recall). Linear attention keeps a (F x (D+1)) summary per head: a few hundred tokens back, one
earlier note is a smear in that summary, and the shipped model found a restated bar only 9% easier than a
new one although its notes were in the context (``musicgen/evaluation/recall.py``). Hybrid models
(Arora et al. 2024, "Simple linear attention language models balance the recall-throughput tradeoff";
Griffin's local attention) restore recall with a sliding window of exact softmax attention beside the
linear state. Generation stays constant in memory and time per token: the window is a ring buffer of the
last ``window`` keys and values.

Positions inside the window are rotary (RoPE): softmax needs exact relative scores, which SPE gives only
in expectation (it is made for linear attention), and a rotation by the token index makes every score a
function of the lag alone. The branch has ``heads`` heads of ``head_dim`` each and writes into the same
residual stream as the linear attention (``Block``); its output projection starts small (the scaled
initialisation of every residual projection), so adding it to a trained model (``train.init_from``) starts
near that model's function. Not at zero: a silent branch gives its queries and keys no gradient signal, and
in a first run (100 steps from the shipped model) its weights had not moved from their initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .lean import TransposedWeights, linear_t

__all__ = ["LocalAttention", "LocalStepPlan", "inverse_frequencies", "rotary_tables", "rotate"]

ROPE_BASE = 10000.0


def inverse_frequencies(head_dim: int, device: torch.device | None = None) -> Tensor:
    """base^(-2i/head_dim), i < head_dim / 2, in float64: angles are formed in float64 so that a position of
    a million tokens still rotates exactly (float32 would be off by ~0.06 rad there, as much as a lag of a
    few tokens at the fastest pairs)."""
    return ROPE_BASE ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)


def rotary_tables(positions: Tensor, head_dim: int) -> tuple[Tensor, Tensor]:
    """cos, sin (L, head_dim / 2) of the rotary angles positions x base^(-2i/head_dim), in float32."""
    angles = positions.to(torch.float64)[:, None] * inverse_frequencies(head_dim, positions.device)[None, :]
    return torch.cos(angles).float(), torch.sin(angles).float()


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the pairs (x[..., i], x[..., i + d/2]) of x (..., L, d) by the angles of ``cos``/``sin`` (L, d/2)."""
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1).to(x.dtype)


class LocalAttention(nn.Module):
    """Causal softmax attention over the last ``window`` tokens, ``heads`` heads of ``head_dim``."""

    def __init__(self, d_model: int, heads: int, head_dim: int, window: int) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"local attention head_dim={head_dim} must be even (rotary pairs)")
        self.heads, self.head_dim, self.window = heads, head_dim, window
        self.qkv = nn.Linear(d_model, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, d_model)

    def _qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        cos, sin = rotary_tables(positions, self.head_dim)
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def forward(self, x: Tensor, return_state: bool = False, prefix: tuple[Tensor, Tensor] | None = None,
                start: int = 0) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, L, D) at positions start..start+L-1 -> (B, L, D); with ``return_state`` also the (rotated) keys
        and values of the last ``window`` positions, to continue from (:meth:`init_cache`, or ``prefix`` of the
        next chunk of a prompt prefilled in chunks)."""
        b, length, _ = x.shape
        q, k, v = self._qkv(x, torch.arange(start, start + length, device=x.device))
        before = 0
        if prefix is not None:
            before = prefix[0].shape[2]
            k, v = torch.cat([prefix[0].to(k.dtype), k], dim=2), torch.cat([prefix[1].to(v.dtype), v], dim=2)
        if before == 0 and length <= self.window:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            lag = (torch.arange(length, device=x.device)[:, None] + before
                   - torch.arange(before + length, device=x.device)[None, :])
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=(lag >= 0) & (lag < self.window))
        y = self.proj(out.transpose(1, 2).reshape(b, length, self.heads * self.head_dim))
        if not return_state:
            return y
        keep = min(k.shape[2], self.window)
        return y, (k[:, :, k.shape[2] - keep:], v[:, :, k.shape[2] - keep:])

    # recurrent form: a ring buffer of the last `window` keys and values --------------------------------
    def init_cache(self, batch_size: int, device: torch.device, prefix: tuple[Tensor, Tensor] | None = None,
                   position: int = 0) -> dict[str, Tensor]:
        """{'lk', 'lv': (B, heads, window, head_dim)}; the key of position p lives in slot p % window.
        ``prefix`` = the state of :meth:`forward` over positions [0, position)."""
        shape = (batch_size, self.heads, self.window, self.head_dim)
        dtype = torch.float64 if self.qkv.weight.dtype == torch.float64 else torch.float32
        lk, lv = torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        if prefix is not None:
            pk, pv = prefix
            slots = torch.arange(position - pk.shape[2], position, device=device) % self.window
            lk[:, :, slots] = pk.to(dtype)
            lv[:, :, slots] = pv.to(dtype)
        return {"lk": lk, "lv": lv}

    def step(self, x: Tensor, cache: dict[str, Tensor], position: int) -> Tensor:
        """x (B, D) at ``position`` -> (B, D); writes its key and value into ``cache`` (in place)."""
        q, k, v = self._qkv(x.unsqueeze(1), torch.tensor([position], device=x.device))
        return self.proj(_attend_ring(q[:, :, 0], k[:, :, 0], v[:, :, 0], cache, position, self.window))

    @torch.no_grad()
    def step_plan(self, cache: dict[str, Tensor], weights_t: TransposedWeights) -> "LocalStepPlan":
        inv_freq = inverse_frequencies(self.head_dim, cache["lk"].device)
        return LocalStepPlan(qkv_w=weights_t(self.qkv.weight), qkv_b=self.qkv.bias,
                             proj_w=weights_t(self.proj.weight), proj_b=self.proj.bias, cache=cache,
                             inv_freq=inv_freq, heads=self.heads, head_dim=self.head_dim, window=self.window)


def _attend_ring(q: Tensor, k: Tensor, v: Tensor, cache: dict[str, Tensor], position: int, window: int) -> Tensor:
    """Write k, v (B, H, d) at slot position % window of the ring buffer, attend q (B, H, d) over the filled slots
    (one SDPA call; the slots' order does not matter, their keys carry their rotation) -> (B, H * d)."""
    keys, values = cache["lk"], cache["lv"]
    slot = position % window
    keys[:, :, slot] = k
    values[:, :, slot] = v
    filled = min(position + 1, window)
    if filled < window:
        keys, values = keys[:, :, :filled], values[:, :, :filled]
    out = F.scaled_dot_product_attention(q.unsqueeze(2).to(keys.dtype), keys, values)  # (B, H, 1, d)
    return out.view(q.shape[0], -1).to(q.dtype)


@dataclass
class LocalStepPlan:
    """The local window's lean step for one generated batch (the cache is updated in place). About 15 ops: at
    batch 1 a step costs its op count, not its arithmetic (:mod:`.lean`)."""

    qkv_w: Tensor
    qkv_b: Tensor | None
    proj_w: Tensor
    proj_b: Tensor | None
    cache: dict[str, Tensor]
    inv_freq: Tensor
    heads: int
    head_dim: int
    window: int

    def rotation(self, position: int) -> tuple[Tensor, Tensor]:
        """(cos, cos) and (-sin, sin) at ``position`` (head_dim,): one per step, shared by every layer's window."""
        angles = self.inv_freq * float(position)  # float64 (see inverse_frequencies)
        cos, sin = torch.cos(angles).float(), torch.sin(angles).float()
        return torch.cat((cos, cos)), torch.cat((-sin, sin))

    def __call__(self, x: Tensor, position: int, rotation: tuple[Tensor, Tensor]) -> Tensor:
        b = x.shape[0]
        qkv = linear_t(x, self.qkv_w, self.qkv_b).view(b, 3, self.heads, self.head_dim)
        qk = qkv[:, :2]  # q and k rotated together: [a, b] -> [a cos - b sin, b cos + a sin]
        qk = qk * rotation[0] + torch.roll(qk, self.head_dim // 2, dims=-1) * rotation[1]
        out = _attend_ring(qk[:, 0], qk[:, 1], qkv[:, 2], self.cache, position, self.window)
        return linear_t(out, self.proj_w, self.proj_b)
