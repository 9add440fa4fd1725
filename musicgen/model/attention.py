"""Causal multi-head self-attention: QKV projection -> optional SPE filter -> attention core.

Cores (``attention.kind``):
* ``linear``: feature map (elu / performer) + causal linear attention (chunked kernel in the
  parallel form, an (F x (D+1)) running state per head in the recurrent form).
* ``softmax``: ``F.scaled_dot_product_attention`` (quadratic baseline); the recurrent form
  writes keys/values into a pre-allocated KV cache.

SPE replaces q, k (dim d per head) by qhat, khat (dim R); the core is unchanged, so SPE also
works with softmax attention.

Linear attention also has a lean one-token step for generation (:meth:`CausalSelfAttention.step_plan`):
the per-sequence constants (transposed weights, feature projection, SPE filter matrices, decay factors)
are gathered once and the step updates the (F x (D+1)) state in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import AttentionConfig, PEConfig
from .decay import AttentionDecay
from .feature_maps import build_feature_map
from .lean import TransposedWeights, linear_t
from .ops.linear_attention import (causal_linear_attention, linear_attention_step, linear_attention_step_,
                                   require_fast_transformers, require_fla)
from .spe import SPEFilter

__all__ = ["LayerNoise", "CausalSelfAttention", "AttentionStepPlan"]


@dataclass
class LayerNoise:
    """Per-layer randomness of one forward / one generated sequence."""

    gate_eps: Tensor | None = None  # SPE gating noise (H, d, R)
    features: Tensor | None = None  # performer random features (H, m, dim)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, attn: AttentionConfig, pe: PEConfig) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.d_model, self.n_heads = d_model, n_heads
        self.head_dim = d_model // n_heads
        self.kind = attn.kind
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

        self.spe: SPEFilter | None = None
        key_dim = self.head_dim
        if pe.is_spe:
            self.spe = SPEFilter(n_heads, self.head_dim, pe.realizations, pe.gated)
            key_dim = pe.realizations
        self.key_dim = key_dim

        if self.kind == "linear":
            self.feature_map = build_feature_map(attn.feature_map, n_heads, key_dim, attn.n_features, attn.redraw_prob)
            self.chunk_size = attn.chunk_size  # int or "auto" (see resolve_chunk_size)
            self.backend = attn.backend
            if self.backend == "fast_transformers":
                require_fast_transformers()  # fail at build time with an actionable message
            elif self.backend == "fla":
                require_fla()  # importable at build time; CUDA tensors are checked per call (the model may move)
        elif self.kind != "softmax":
            raise ValueError(f"unknown attention.kind {self.kind!r} (expected 'linear' or 'softmax')")
        #: diagnostics: when a list, every forward appends (kind, q or phi(q), k or phi(k), log_gamma)
        #: detached, so tools can look at the attention the model really computes (evaluation/positional.py)
        self.probe: list | None = None
        self.decay: AttentionDecay | None = None
        if attn.decay != "none":
            self.decay = AttentionDecay(n_heads, attn.decay, attn.decay_tau_min, attn.decay_tau_max)

    # randomness --------------------------------------------------------------------------
    def draw(self, generator: torch.Generator | None, device: torch.device, training: bool) -> LayerNoise:
        """Draw this layer's noise. Order (gate noise, then features) is part of the parity contract."""
        eps = self.spe.draw(generator, device) if self.spe is not None else None
        feats = None
        if self.kind == "linear":
            feats = self.feature_map.sample(generator, device, training)
        return LayerNoise(eps, feats)

    # shared pieces -----------------------------------------------------------------------
    def _project(
        self, x: Tensor, codes: tuple[Tensor, Tensor] | None, noise: LayerNoise
    ) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, L, D) -> q, k (B, H, L, key_dim), v (B, H, L, head_dim)."""
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim).unbind(2)
        if self.spe is not None:
            assert codes is not None, "SPE layer called without codes"
            q, k = self.spe(q, k, codes, noise.gate_eps)  # already (B, H, L, R)
            return q, k, v.transpose(1, 2)
        return q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)

    def _merge(self, out: Tensor, like: Tensor) -> Tensor:
        b, _, length, _ = out.shape
        return self.proj(out.to(like.dtype).transpose(1, 2).reshape(b, length, self.d_model))

    def log_gamma(self) -> Tensor | None:
        """(H,) decay rates log(gamma) of the linear-attention state, or None (no forgetting)."""
        return None if self.decay is None else self.decay.log_gamma()

    # parallel form -----------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        codes: tuple[Tensor, Tensor] | None,
        noise: LayerNoise,
        return_state: bool = False,
        initial: object | None = None,
    ) -> Tensor | tuple[Tensor, object]:
        """x (B, L, D) -> (B, L, D); with ``return_state`` also the recurrent state after x. ``initial``: the state
        returned for the tokens before x (a prompt prefilled in chunks): linear, the (B, H, F, D+1) state;
        softmax, the keys and values so far."""
        q, k, v = self._project(x, codes, noise)
        if self.kind == "softmax":
            if self.probe is not None:
                self.probe.append(("softmax", q.detach(), k.detach(), None))
            if initial is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                pk, pv = initial  # type: ignore[misc]
                k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
                seen = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(pk.shape[2])
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=seen)
            state: object = (k, v)
        else:
            fq = self.feature_map(q, noise.features, is_query=True)
            fk = self.feature_map(k, noise.features, is_query=False)
            if self.probe is not None:
                lg = self.log_gamma()
                self.probe.append(("linear", fq.detach(), fk.detach(), None if lg is None else lg.detach()))
            out, state = causal_linear_attention(
                fq, fk, v, self.chunk_size, self.backend, return_state=True, log_gamma=self.log_gamma(),
                initial=initial,  # type: ignore[arg-type]
            )
        y = self._merge(out, v)
        return (y, state) if return_state else y

    # recurrent form ----------------------------------------------------------------------
    def init_cache(
        self, batch_size: int, device: torch.device, capacity: int, prefix: object | None = None
    ) -> dict:
        """Empty recurrent state, or one continuing the state returned by ``forward(return_state=True)``.

        linear: {'state': (B, H, F, D+1)} — size independent of the position.
        softmax: {'k', 'v': (B, H, capacity, dim)} pre-allocated, 'len': filled length.
        """
        if self.kind == "linear":
            if prefix is not None:  # a copy: the kernel's state is a view into its per-chunk buffer
                return {"state": prefix.clone()}
            f = self.feature_map.n_features
            return {"state": torch.zeros(batch_size, self.n_heads, f, self.head_dim + 1, device=device)}
        length = 0
        if prefix is not None:
            pk, pv = prefix  # type: ignore[misc]
            length = pk.shape[2]
            capacity = max(capacity, length)
        kc = torch.zeros(batch_size, self.n_heads, capacity, self.key_dim, device=device)
        vc = torch.zeros(batch_size, self.n_heads, capacity, self.head_dim, device=device)
        if prefix is not None:
            kc[:, :, :length] = pk
            vc[:, :, :length] = pv
        return {"k": kc, "v": vc, "len": length}

    def step(
        self, x: Tensor, codes: tuple[Tensor, Tensor] | None, noise: LayerNoise, cache: dict
    ) -> tuple[Tensor, dict]:
        """x (B, D) for one position -> (B, D). Updates ``cache`` (in place for the KV cache)."""
        q, k, v = self._project(x.unsqueeze(1), codes, noise)  # (B, H, 1, .)
        if self.kind == "linear":
            fq = self.feature_map(q, noise.features, is_query=True)
            fk = self.feature_map(k, noise.features, is_query=False)
            out, state = linear_attention_step(fq[:, :, 0], fk[:, :, 0], v[:, :, 0], cache["state"],
                                               log_gamma=self.log_gamma())
            cache = {"state": state}
            out = out.unsqueeze(2)
        else:
            n = cache["len"]
            if n >= cache["k"].shape[2]:  # grow by doubling: amortised O(1), rare
                cache["k"] = torch.cat([cache["k"], torch.zeros_like(cache["k"])], dim=2)
                cache["v"] = torch.cat([cache["v"], torch.zeros_like(cache["v"])], dim=2)
            cache["k"][:, :, n] = k[:, :, 0]
            cache["v"][:, :, n] = v[:, :, 0]
            cache["len"] = n + 1
            kc, vc = cache["k"][:, :, : n + 1], cache["v"][:, :, : n + 1]
            out = F.scaled_dot_product_attention(q, kc.to(q.dtype), vc.to(q.dtype))
        return self._merge(out, v)[:, 0], cache

    # lean recurrent step (generation hot path) -------------------------------------------------------
    @property
    def has_lean_step(self) -> bool:
        """Linear attention has a lean step (:meth:`step_plan`); softmax keeps :meth:`step`."""
        return self.kind == "linear"

    def lean_step_fits(self, cache: dict, device: torch.device) -> bool:
        """Whether ``cache`` can be updated in place by the lean step (float32, contiguous, on ``device``)."""
        st = cache.get("state")
        if st is None or st.dtype != torch.float32 or not st.is_contiguous() or st.device != device:
            return False
        return not (st.is_inference() and not torch.is_inference_mode_enabled())  # in-place needs inference mode

    @torch.no_grad()
    def step_plan(
        self, noise: LayerNoise, cache: dict, weights_t: TransposedWeights, spe_weights: Tensor | None = None
    ) -> "AttentionStepPlan":
        """This layer's constants for one generated batch: ``cache`` (updated in place by the plan),
        the sequence's noise, and ``spe_weights``, the (2H, d or 2d, R) filter matrices [[Qbar(n) ; eps],
        [Kbar(n) ; eps]] the code generator's plan refreshes every position (SPE layers only)."""
        assert self.has_lean_step, "softmax attention has no lean step"
        h, d = self.n_heads, self.head_dim
        batch, device = cache["state"].shape[0], cache["state"].device
        spe = None
        if self.spe is not None:
            assert spe_weights is not None, "SPE layer planned without its code generator's filter matrices"
            spe = self.spe.step_plan(spe_weights)
        log_gamma = self.log_gamma()
        return AttentionStepPlan(
            qkv_w=weights_t(self.qkv.weight), qkv_b=self.qkv.bias, spe=spe,
            features=self.feature_map.step_plan(noise.features), cache=cache,
            gamma=None if log_gamma is None else torch.exp(log_gamma).view(1, h, 1, 1).contiguous(),
            v1=torch.ones(batch, h, d + 1, device=device),
            proj_w=weights_t(self.proj.weight), proj_b=self.proj.bias,
        )


@dataclass
class AttentionStepPlan:
    """One linear-attention layer's lean step for one generated batch (:meth:`CausalSelfAttention.step_plan`)."""

    qkv_w: Tensor  # (D, 3D) transposed weight
    qkv_b: Tensor | None
    spe: Callable[[Tensor], Tensor] | None  # (B, 2, H, d) [q, k] -> (2H, B, R), or None without SPE
    features: Callable[[Tensor], tuple[Tensor, Tensor]]  # (2H, B, dim) -> phi(q), phi(k) (H, B, F)
    cache: dict  # the layer's cache ({"state": (B, H, F, D+1)}), its state updated in place
    gamma: Tensor | None  # (1, H, 1, 1) decay factor of the state per step, or None
    v1: Tensor  # (B, H, D+1) buffer, last column = 1
    proj_w: Tensor
    proj_b: Tensor | None

    def __call__(self, x: Tensor) -> Tensor:
        """x (B, D) normalised input at the next position -> the attention output (B, D); advances the state."""
        b, d_model = x.shape
        h = self.v1.shape[1]
        d = self.v1.shape[2] - 1
        qkv = linear_t(x, self.qkv_w, self.qkv_b).view(b, 3, h, d)
        qk = qkv[:, :2]  # (B, 2, H, d)
        qh = self.spe(qk) if self.spe is not None else qk.reshape(b, 2 * h, d).transpose(0, 1)  # (2H, B, .)
        fq, fk = self.features(qh)
        self.v1[..., :d].copy_(qkv[:, 2])
        out = linear_attention_step_(self.cache["state"], fq, fk, self.v1, self.gamma)
        return linear_t(out.view(b, d_model), self.proj_w, self.proj_b)
