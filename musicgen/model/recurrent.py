"""Lean recurrent ``step`` for linear attention (generation hot path).

At batch 1 a generation step is a few hundred tiny ops: the time is the per-op overhead, not
arithmetic. :class:`StepPlan` therefore precomputes, once per generated sequence, everything
that does not change from one token to the next, and the step runs ~25 fused ops per layer,
functional calls only (no ``nn.Module.__call__``), updating the attention states in place:

* SineSPE: the mixing matrices Mq, Mk of the sequence's noise (``SineSPE._mixing``) are
  computed once; per step the codes Qbar(n) = Omega(n) Mq, Kbar(n) = Omega(n) Mk are one bmm
  per code generator (float64 phase reduced mod 1, exactly like ``SineSPE.codes_at``), copied
  once into a buffer shared by all the layers using that generator. The gated filter
      qhat[h, r] = sum_d (q sqrt(1-g))[h, d] Qbar[h, d, r] + (q sqrt(g))[h, d] eps[h, d, r]
  is then one multiply + one bmm per layer for queries and keys together, against the layer's
  (2H, 2d, R) matrix [[Qbar ; eps], [Kbar ; eps]] (eps rows filled once per sequence).
* Performer projections (features x dim^-1/4), LayerNorm / Linear weights are read once.
* The (F x (D+1)) attention state is decayed (``attention.decay``: multiplied by gamma per head) and
  updated in place (``addcmul_``), with a persistent
  (B, H, D+1) buffer whose last column is 1 for the normaliser.

Same maths as the reference path (``CausalSelfAttention.step``), different float rounding
only; the parity tests compare both against the parallel form. Used only where it applies:
eval mode, gradients off, float32, no autocast, linear attention, pe none / ape / spe_sine
(spe_conv and softmax keep the generic path). The plan is rebuilt automatically if any
parameter is modified in place (optimizer step, ``load_state_dict``): it records the
parameters' version counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .causal_linear import EPS
from .feature_maps import EluFeatureMap, PerformerFeatureMap
from .spe import SineSPE

__all__ = ["StepPlan", "plan_applies", "build_plan", "fast_step"]


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # pragma: no cover - older torch
        return torch.is_autocast_enabled()


@dataclass
class _LayerPlan:
    ln1: tuple[Tensor, Tensor, float]
    qkv_w: Tensor  # Linear weights are stored transposed (in, out): see _weights_t
    qkv_b: Tensor | None
    spe_w: Tensor | None  # (2H, d or 2d, R) view of a spe_bufs entry: queries then keys
    spe_mul: Tensor | None  # (H, 2, d) [sqrt(1-g), sqrt(g)] when gated
    gen_index: int
    feature: str  # "elu" | "performer"
    feat_w: Tensor | None  # (2H, dim, m) performer projection (scale folded in), q then k
    key_c1: float
    key_c2: float
    cache: dict  # the layer's cache dict ({"state": (B, H, F, D+1)}), updated in place
    gamma: Tensor | None  # (1, H, 1, 1) decay factor of the state per step, or None
    v1: Tensor  # (B, H, D+1) buffer, last column = 1
    proj_w: Tensor
    proj_b: Tensor | None
    ln2: tuple[Tensor, Tensor, float]
    ff1_w: Tensor
    ff1_b: Tensor | None
    ff2_w: Tensor
    ff2_b: Tensor | None
    gelu: str


@dataclass
class StepPlan:
    """Per-sequence constants of the recurrent step (see the module docstring)."""

    params: list[Tensor]  # the model's parameters, and their version counters at build time
    versions: tuple[int, ...]
    inference: bool
    batch: int
    device: torch.device
    embed: Tensor  # (V, d_model) token embedding pre-multiplied by sqrt(d_model)
    sine_freqs: list[Tensor]  # per code generator: (H, d, K) frequencies, float64
    omegas: list[Tensor]  # per code generator: (H d, 1, 2K) buffer [cos, sin] of the position
    mixings: list[Tensor] = field(default_factory=list)  # per code generator: (H d, 2K, 2R)
    spe_bufs: list[Tensor] = field(default_factory=list)  # per code generator (see build_plan)
    slot: dict[int, tuple[int, int]] = field(default_factory=dict)  # layer -> (generator, index in its buffer)
    layers: list[_LayerPlan] = field(default_factory=list)
    lnf: tuple[Tensor, Tensor, float] | None = None
    head: Tensor | None = None  # (d_model, V)

    def nbytes(self) -> int:
        """Constant-size helper tensors only (the attention states are counted in ``caches``)."""
        total = sum(t.numel() * t.element_size() for t in self.omegas + self.mixings + self.spe_bufs)
        for lp in self.layers:
            total += lp.v1.numel() * lp.v1.element_size()
        return total


def _versions(params: list[Tensor]) -> tuple[int, ...]:
    return tuple(p._version for p in params)


def plan_applies(model, state) -> bool:
    """Whether the lean path reproduces ``model.step`` for this call (else the generic path)."""
    if model.training or torch.is_grad_enabled():
        return False
    cfg = model._config
    if cfg["attention"]["kind"] != "linear" or cfg["pe"]["kind"] not in ("none", "ape", "spe_sine"):
        return False
    w = model.embed.weight
    if w.dtype != torch.float32 or _autocast_on(w.device.type):
        return False
    for cache in state.caches:
        st = cache.get("state")
        if st is None or st.dtype != torch.float32 or not st.is_contiguous() or st.device != w.device:
            return False
        if st.is_inference() and not torch.is_inference_mode_enabled():
            return False  # in-place updates of inference tensors need inference mode
    return True


def _weights_t(model, params: list[Tensor], versions: tuple[int, ...]) -> dict[int, Tensor]:
    """Contiguous transposed copies (in, out) of the model's Linear weights, cached on the model.

    At batch 1 a Linear is a matrix-vector product bound by reading the weight; x @ W^T with W^T
    stored row-major streams it contiguously and runs ~2x faster on CPU than ``F.linear`` (same
    products, summation order may differ). Shared by all the sequences being generated; rebuilt
    when a parameter changes.
    """
    cached = model.__dict__.get("_step_weights_t")
    key = (versions, tuple(id(p) for p in params))
    if cached is not None and cached[0] == key:
        return cached[1]
    table = {}
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            table[id(mod.weight)] = mod.weight.detach().t().contiguous()
    table[id(model.embed.weight)] = model.embed.weight.detach().t().contiguous()
    model.__dict__["_step_weights_t"] = (key, table)
    return table


def _ln(mod) -> tuple[Tensor, Tensor, float]:
    return mod.weight, mod.bias, mod.eps


@torch.no_grad()
def build_plan(model, state) -> StepPlan:
    cfg = model._config
    device = model.embed.weight.device
    batch = state.caches[0]["state"].shape[0]
    d_model = cfg["d_model"]
    params = list(model.parameters())
    wt = _weights_t(model, params, _versions(params))
    plan = StepPlan(
        params=params,
        versions=_versions(params),
        inference=torch.is_inference_mode_enabled(),
        batch=batch,
        device=device,
        embed=model.embed.weight * math.sqrt(d_model),
        sine_freqs=[],
        omegas=[],
    )
    # per code generator: the (H d, 2K, 2R) [Mq | Mk] mixing of this sequence's noise, and one
    # (n_layers using it, 2, H, d or 2d, R) buffer of per-layer filter matrices: rows [:d] get the
    # codes [Qbar(n), Kbar(n)] every step (one copy for all layers), rows [d:] hold the layer's
    # gating noise eps (constant).
    users = [[i for i in range(len(model.blocks)) if model._gen_index(i) == g] for g in range(len(model.code_generators))]
    for g, (gen, noise) in enumerate(zip(model.code_generators, state.code_states)):
        assert isinstance(gen, SineSPE)
        h, d, k, r = gen.n_heads, gen.head_dim, gen.sines, gen.realizations
        hi = torch.float32 if device.type == "mps" else torch.float64
        plan.sine_freqs.append((torch.sigmoid(gen.freqs) / 2).to(hi))
        plan.omegas.append(torch.empty(h * d, 1, 2 * k, device=device))
        mq, mk = gen._mixing(noise)  # (H, d, 2K, R) each
        plan.mixings.append(torch.cat([mq, mk], dim=-1).reshape(h * d, 2 * k, 2 * r).contiguous())
        gated = model.blocks[users[g][0]].attn.spe.gated
        buf = torch.zeros(len(users[g]), 2, h, 2 * d if gated else d, r, device=device)
        for j, i in enumerate(users[g]):
            plan.slot[i] = (g, j)
            if gated:
                eps = state.layer_noise[i].gate_eps.to(buf.dtype)  # (H, d, R)
                buf[j, :, :, d:] = eps
        plan.spe_bufs.append(buf)

    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        h, d = attn.n_heads, attn.head_dim
        noise = state.layer_noise[i]
        spe_w = spe_mul = None
        gi = model._gen_index(i)
        if attn.spe is not None:
            g, j = plan.slot[i]
            spe_w = plan.spe_bufs[g][j].view(2 * h, -1, plan.spe_bufs[g].shape[-1])  # (2H, d or 2d, R)
            if attn.spe.gated:  # q -> [q sqrt(1-g), q sqrt(g)]
                spe_mul = torch.stack([torch.sigmoid(-attn.spe.gate).sqrt(), torch.sigmoid(attn.spe.gate).sqrt()], 1)
        fmap = attn.feature_map
        feat_w, c1, c2 = None, 0.0, 0.0
        if isinstance(fmap, PerformerFeatureMap):
            kind = "performer"
            scale = fmap.in_dim**-0.25
            w = (noise.features.to(torch.float32) * scale).transpose(-1, -2)  # (H, dim, m)
            feat_w = torch.cat([w, w]).contiguous()
            c1, c2 = 0.5 * scale * scale, 0.5 * math.log(fmap.n_features)
        elif isinstance(fmap, EluFeatureMap):
            kind = "elu"
        else:  # pragma: no cover - build_feature_map only makes these two
            raise TypeError(type(fmap))
        cache = state.caches[i]
        log_gamma = attn.log_gamma()
        gamma = None if log_gamma is None else torch.exp(log_gamma).view(1, h, 1, 1).contiguous()
        v1 = torch.ones(batch, h, d + 1, device=device)
        ff1, act, ff2 = blk.ff[0], blk.ff[1], blk.ff[2]
        plan.layers.append(_LayerPlan(
            ln1=_ln(blk.ln1), qkv_w=wt[id(attn.qkv.weight)], qkv_b=attn.qkv.bias, spe_w=spe_w, spe_mul=spe_mul, gen_index=gi,
            feature=kind, feat_w=feat_w, key_c1=c1, key_c2=c2, cache=cache, gamma=gamma, v1=v1,
            proj_w=wt[id(attn.proj.weight)], proj_b=attn.proj.bias, ln2=_ln(blk.ln2),
            ff1_w=wt[id(ff1.weight)], ff1_b=ff1.bias, ff2_w=wt[id(ff2.weight)], ff2_b=ff2.bias,
            gelu=getattr(act, "approximate", "none"),
        ))
    plan.lnf = _ln(model.ln_f)
    plan.head = wt[id(model.embed.weight if model.head is None else model.head.weight)]
    return plan


def get_plan(model, state) -> StepPlan:
    plan = getattr(state, "plan", None)
    if (
        plan is None
        or plan.versions != _versions(plan.params)
        or plan.inference != torch.is_inference_mode_enabled()
        or any(lp.cache is not c for lp, c in zip(plan.layers, state.caches))
    ):
        plan = build_plan(model, state)
        state.plan = plan
    return plan


def _linear(x: Tensor, w_t: Tensor, bias: Tensor | None) -> Tensor:
    return torch.mm(x, w_t) if bias is None else torch.addmm(bias, x, w_t)


def fast_step(model, tokens: Tensor, state) -> Tensor:
    """One token for every sequence: tokens (B,) -> logits (B, V); advances ``state`` in place."""
    plan = get_plan(model, state)
    n = state.position
    d_model = plan.embed.shape[1]
    x = F.embedding(tokens, plan.embed)
    if model.ape is not None:
        x = x + model.ape(torch.tensor([n], device=tokens.device)).to(x.dtype)
    # SPE codes at position n, once per code generator for all the layers that use it
    for freqs, omega, mixing, buf in zip(plan.sine_freqs, plan.omegas, plan.mixings, plan.spe_bufs):
        k = freqs.shape[-1]
        phase = torch.frac(freqs * n).to(torch.float32).mul_(2 * math.pi).view(-1, 1, k)
        torch.cos(phase, out=omega[..., :k])
        torch.sin(phase, out=omega[..., k:])
        codes = torch.bmm(omega, mixing)  # (H d, 1, 2R): [Qbar(n) | Kbar(n)]
        _, _, h, _, r = buf.shape
        d = codes.shape[0] // h
        buf[:, :, :, :d].copy_(codes.view(h, d, 2, r).permute(2, 0, 1, 3))
    b = x.shape[0]
    for lp in plan.layers:
        h = lp.v1.shape[1]
        d = lp.v1.shape[2] - 1
        y = F.layer_norm(x, (d_model,), *lp.ln1[:2], lp.ln1[2])
        qkv = _linear(y, lp.qkv_w, lp.qkv_b).view(b, 3, h, d)
        qk = qkv[:, :2]  # (B, 2, H, d)
        if lp.spe_w is not None:
            u = qk.unsqueeze(-2) * lp.spe_mul if lp.spe_mul is not None else qk  # (B, 2, H, 2, d)
            qh = torch.bmm(u.reshape(b, 2 * h, -1).transpose(0, 1), lp.spe_w)  # (2H, B, R)
        else:
            qh = qk.reshape(b, 2 * h, d).transpose(0, 1)  # (2H, B, d)
        if lp.feature == "performer":
            logits = torch.bmm(qh, lp.feat_w)  # (2H, B, m)
            lq, lk = logits[:h], logits[h:]
            fq = lq.sub_(lq.amax(-1, keepdim=True)).exp_()
            sq = qh[h:].square().sum(-1, keepdim=True)
            fk = lk.sub_(sq, alpha=lp.key_c1).sub_(lp.key_c2).exp_()
        else:
            feats = F.elu(qh).add_(1.0)
            fq, fk = feats[:h], feats[h:]
        state_t = lp.cache["state"]  # (B, H, F, D+1)
        lp.v1[..., :d].copy_(qkv[:, 2])
        if lp.gamma is not None:
            state_t.mul_(lp.gamma)
        state_t.addcmul_(fk.transpose(0, 1).unsqueeze(-1), lp.v1.unsqueeze(-2))
        fq = fq.transpose(0, 1).reshape(b * h, 1, -1)
        num = torch.bmm(fq, state_t.view(b * h, -1, d + 1))  # (B H, 1, D+1)
        out = num[..., :d] / num[..., d:].add(EPS)
        x = x + _linear(out.view(b, d_model), lp.proj_w, lp.proj_b)
        y = F.layer_norm(x, (d_model,), *lp.ln2[:2], lp.ln2[2])
        y = F.gelu(_linear(y, lp.ff1_w, lp.ff1_b), approximate=lp.gelu)
        x = x + _linear(y, lp.ff2_w, lp.ff2_b)
    y = F.layer_norm(x, (d_model,), *plan.lnf[:2], plan.lnf[2])
    state.position = n + 1
    return torch.mm(y, plan.head)
