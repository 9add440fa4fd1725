"""Decoder-only music Transformer with a parallel (training) and a recurrent (generation) form.

Randomness contract: every forward draws, in this order, (1) the noise of each SPE code
generator (one if ``pe.share``, else one per layer), then (2) per layer the gating noise and the
performer features. ``init_state`` draws the very same things in the same order, so with equal
seeds the recurrent form reproduces the parallel one (see the parity tests). Noise is shared by
the sequences of a batch: one draw per forward in training (fresh noise per batch), one per
generated batch of sequences at generation.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import CausalSelfAttention, LayerNoise
from .config import model_config_from
from .embeddings import build_ape
from .recurrent import fast_step, plan_applies
from .spe import build_code_generator

__all__ = ["MusicTransformer", "GenerationState", "build_model"]


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
    #: per-sequence constants of the lean step (``recurrent.StepPlan``), built on the first step
    plan: Any = field(default=None, repr=False, compare=False)

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
        return total


class Block(nn.Module):
    """Pre-LayerNorm block: x + drop(attn(ln(x))), then x + drop(ff(ln(x))). Pre-LN keeps deep
    stacks (24 layers in the paper config) trainable without warm-up tricks."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d = cfg["d_model"]
        self.ln1 = nn.LayerNorm(d)
        self.attn = CausalSelfAttention(d, cfg["n_heads"], cfg["attention"], cfg["pe"])
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, cfg["d_ff"]), nn.GELU(), nn.Linear(cfg["d_ff"], d))
        self.drop = nn.Dropout(cfg["dropout"])

    def forward(self, x: Tensor, codes, noise: LayerNoise, return_state: bool = False):
        a = self.attn(self.ln1(x), codes, noise, return_state=return_state)
        state = None
        if return_state:
            a, state = a
        x = x + self.drop(a)
        x = x + self.drop(self.ff(self.ln2(x)))
        return (x, state) if return_state else x

    def step(self, x: Tensor, codes, noise: LayerNoise, cache: dict) -> tuple[Tensor, dict]:
        a, cache = self.attn.step(self.ln1(x), codes, noise, cache)
        x = x + self.drop(a)
        return x + self.drop(self.ff(self.ln2(x))), cache


class MusicTransformer(nn.Module):
    """Token ids (B, L) -> next-token logits (B, L, V). Token 0 is PAD.

    Input/output embeddings are tied (``tie_embeddings``): the output layer is the transposed
    token embedding, which saves V x d_model parameters and works well for small vocabularies.
    The token embedding is scaled by sqrt(d_model) so it is on the scale of the sinusoidal
    absolute positions when ``pe.kind: ape``.
    """

    def __init__(self, config: dict) -> None:
        super().__init__()
        cfg = model_config_from(config)
        if not cfg["vocab_size"]:
            raise ValueError("model config needs vocab_size (use build_model(cfg, vocab_size))")
        self._config = cfg
        d, v = cfg["d_model"], cfg["vocab_size"]
        self.embed = nn.Embedding(v, d, padding_idx=0)
        pe = cfg["pe"]
        self.ape = build_ape(pe["ape"], d, pe["max_len"]) if pe["kind"] == "ape" else None
        n_gen = 0
        if pe["kind"] in ("spe_sine", "spe_conv"):
            n_gen = 1 if pe["share"] else cfg["n_layers"]
        head_dim = d // cfg["n_heads"]
        self.code_generators = nn.ModuleList(
            build_code_generator(pe, cfg["n_heads"], head_dim) for _ in range(n_gen)
        )
        self.drop = nn.Dropout(cfg["dropout"])
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["n_layers"]))
        self.ln_f = nn.LayerNorm(d)
        self.head = None if cfg["tie_embeddings"] else nn.Linear(d, v, bias=False)
        self._init_weights()

    # ------------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """Plain, JSON-serialisable resolved config (includes vocab_size)."""
        return model_config_from(self._config)

    def _init_weights(self) -> None:
        n = self._config["n_layers"]
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        for blk in self.blocks:  # residual branches: GPT-2 style 1/sqrt(2 n_layers) scaling
            nn.init.normal_(blk.attn.proj.weight, std=0.02 / math.sqrt(2 * n))
            nn.init.normal_(blk.ff[2].weight, std=0.02 / math.sqrt(2 * n))
        nn.init.normal_(self.embed.weight, std=self._config["d_model"] ** -0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()

    def _device(self) -> torch.device:
        return self.embed.weight.device

    def _gen_index(self, layer: int) -> int:
        return 0 if len(self.code_generators) == 1 else layer

    def _draw(self, generator: torch.Generator | None, device: torch.device, training: bool):
        code_noise = [g.draw(generator, device) for g in self.code_generators]
        layer_noise = [blk.attn.draw(generator, device, training) for blk in self.blocks]
        return code_noise, layer_noise

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self._config["d_model"])
        if self.ape is not None:
            x = x + self.ape(positions).to(x.dtype)
        return self.drop(x)

    def _logits(self, x: Tensor) -> Tensor:
        x = self.ln_f(x)
        return F.linear(x, self.embed.weight) if self.head is None else self.head(x)

    # parallel form ----------------------------------------------------------------------
    def _run(self, tokens: Tensor, code_noise, layer_noise, return_state: bool):
        length = tokens.shape[1]
        x = self._embed(tokens, torch.arange(length, device=tokens.device))
        codes = [g.codes(n, length) for g, n in zip(self.code_generators, code_noise)]
        states = []
        for i, blk in enumerate(self.blocks):
            c = codes[self._gen_index(i)] if codes else None
            if return_state:
                x, st = blk(x, c, layer_noise[i], return_state=True)
                states.append(st)
            else:
                x = blk(x, c, layer_noise[i])
        return self._logits(x), states

    def forward(self, tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """tokens (B, L) -> logits (B, L, V). ``generator`` seeds SPE noise / performer features."""
        code_noise, layer_noise = self._draw(generator, tokens.device, self.training)
        logits, _ = self._run(tokens, code_noise, layer_noise, return_state=False)
        return logits

    # recurrent form ---------------------------------------------------------------------
    def init_state(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
        max_len: int | None = None,
    ) -> GenerationState:
        """Start ``batch_size`` sequences: draws their noise/features (seeded by ``generator``).

        ``max_len`` only matters for softmax attention: KV-cache capacity pre-allocated
        (default ``pe.max_len``; the cache doubles if exceeded). Linear attention has no limit.
        """
        device = torch.device(device) if device is not None else self._device()
        code_noise, layer_noise = self._draw(generator, device, training=False)
        cap = int(max_len or self._config["pe"]["max_len"])
        return GenerationState(
            position=0,
            code_states=[g.begin(n) for g, n in zip(self.code_generators, code_noise)],
            layer_noise=layer_noise,
            caches=[blk.attn.init_cache(batch_size, device, cap) for blk in self.blocks],
        )

    @torch.no_grad()
    def prefill(
        self, tokens: Tensor, generator: torch.Generator | None = None, max_len: int | None = None
    ) -> tuple[Tensor, GenerationState]:
        """Run the parallel form on a prompt (B, L) and return (logits (B, L, V), state at L).

        Equivalent to ``init_state`` + L calls to ``step`` (same draws), but at training speed:
        use it to continue a prompt.
        """
        device = tokens.device
        code_noise, layer_noise = self._draw(generator, device, training=False)
        logits, states = self._run(tokens, code_noise, layer_noise, return_state=True)
        b, length = tokens.shape
        cap = max(int(max_len or self._config["pe"]["max_len"]), length)
        return logits, GenerationState(
            position=length,
            code_states=[g.begin(n) for g, n in zip(self.code_generators, code_noise)],
            layer_noise=layer_noise,
            caches=[blk.attn.init_cache(b, device, cap, prefix=st) for blk, st in zip(self.blocks, states)],
        )

    def step(self, tokens: Tensor, state: GenerationState) -> tuple[Tensor, GenerationState]:
        """tokens (B,) at position ``state.position`` -> logits (B, V) and the advanced state.

        In eval mode with gradients off (generation), linear attention with pe none / ape /
        spe_sine runs the lean path of :mod:`.recurrent` (per-sequence constants cached in
        ``state.plan``, attention states updated in place); same maths as the generic path below.
        """
        if plan_applies(self, state):  # eval + no grad + linear attention: lean path, same maths
            return fast_step(self, tokens, state), state
        n = state.position
        x = self._embed(tokens.unsqueeze(1), torch.tensor([n], device=tokens.device))[:, 0]
        codes, code_states = [], []
        for g, cs in zip(self.code_generators, state.code_states):
            c, cs = g.step(cs, n)
            codes.append(c)
            code_states.append(cs)
        caches = []
        for i, blk in enumerate(self.blocks):
            c = codes[self._gen_index(i)] if codes else None
            x, cache = blk.step(x, c, state.layer_noise[i], state.caches[i])
            caches.append(cache)
        new = GenerationState(n + 1, code_states, state.layer_noise, caches)
        return self._logits(x), new


def build_model(model_cfg: Any, vocab_size: int) -> MusicTransformer:
    """Build a model from a ``conf/model/*.yaml`` content (dict or DictConfig) and a vocab size."""
    return MusicTransformer(model_config_from(model_cfg, vocab_size))
