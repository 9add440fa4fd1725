"""Decoder-only music Transformer with a parallel (training) and a recurrent (generation) form.

Randomness contract: every forward draws, in this order, (1) the noise of each SPE code
generator (one if ``pe.share``, else one per layer), then (2) per layer the gating noise and the
performer features. ``init_state`` draws the very same things in the same order, so with equal
seeds the recurrent form reproduces the parallel one (see the parity tests). Noise is shared by
the sequences of a batch: one draw per forward in training (fresh noise per batch), one per
generated batch of sequences at generation.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .block import Block
from .config import ModelConfig
from .embeddings import build_ape
from .graphs import StepGraph, graphs_apply
from .lean import TransposedWeights, autocast_on, parameter_versions
from .recall import BarClock, RecallHead, RecallMemory
from .spe import build_code_generator
from .state import GenerationState, StepPlan

__all__ = ["MusicTransformer", "GenerationState", "build_model"]


#: prompts longer than this many tokens are prefilled in chunks of it (:meth:`MusicTransformer.prefill`)
PREFILL_CHUNK = 4096


def _detach_state(state: Any) -> Any:
    """A layer's prefill state as an owned copy (tensors cloned, tuples kept), so a chunk's buffers can go."""
    if isinstance(state, Tensor):
        return state.clone()
    if isinstance(state, tuple):
        return tuple(_detach_state(s) for s in state)
    return state


class MusicTransformer(nn.Module):
    """Token ids (B, L) -> next-token logits (B, L, V). Token 0 is PAD.

    The output layer is a separate Linear (``tie_embeddings: false``, every preset) or the transposed
    token embedding (``true``, the default of a config written in code), which saves V x d_model
    parameters. The token embedding is scaled by sqrt(d_model) so it is on the scale of the sinusoidal
    absolute positions when ``pe.kind: ape``.
    """

    def __init__(self, config: ModelConfig | Any) -> None:
        super().__init__()
        cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_mapping(config)
        if not cfg.vocab_size:
            raise ValueError("model config needs vocab_size (use build_model(cfg, vocab_size))")
        self.cfg = cfg
        d, v, pe = cfg.d_model, cfg.vocab_size, cfg.pe
        self.embed = nn.Embedding(v, d, padding_idx=0)
        self.ape = build_ape(pe.ape, d, pe.max_len) if pe.kind == "ape" else None
        self.code_generators = nn.ModuleList(
            build_code_generator(pe, cfg.n_heads, cfg.head_dim) for _ in range(cfg.n_code_generators)
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = None if cfg.tie_embeddings else nn.Linear(d, v, bias=False)
        #: pointer over the piece's own past (``recall.window``; :mod:`.recall`), or None
        rc = cfg.recall
        if rc.window and rc.bar_clock and not rc.bar_token:
            raise ValueError("model.recall.bar_clock needs the vocabulary's Bar and Position token ids "
                             "(build_model(..., time_markers=...); train.py fills them from the tokenizer)")
        clock = BarClock(rc.bar_token, rc.position_first, rc.position_count) if rc.bar_clock else None
        self.recall = RecallHead(d, rc.key_dim, rc.window, clock, rc.max_lag_bars) if rc.window else None
        self._weights_t = TransposedWeights()  # shared by the lean steps of every generated batch
        #: replay the lean step as a CUDA graph on CUDA (:mod:`.graphs`); off by default, no effect elsewhere
        self.step_graphs = False
        self._init_weights()

    # ------------------------------------------------------------------------------------
    @property
    def config(self) -> dict:
        """Plain, JSON-serialisable resolved config (includes vocab_size): what checkpoints store."""
        return self.cfg.to_dict()

    def _init_weights(self) -> None:
        n = self.cfg.n_layers
        for mod in self.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.02)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)
        for blk in self.blocks:  # residual branches: GPT-2 style 1/sqrt(2 n_layers) scaling
            for proj in blk.residual_projections():
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * n))
        nn.init.normal_(self.embed.weight, std=self.cfg.d_model ** -0.5)
        with torch.no_grad():
            self.embed.weight[0].zero_()
        if self.recall is not None:
            self.recall.reset_parameters()

    def positional_parameter_names(self) -> set[str]:
        """Names of the positional parameters (SPE code generators and filters, attention decay rates), as the
        modules that own them declare (``holds_positional_parameters``): the optimizer gives them their own
        group, exports keep them fp32 and the diagnostics follow them, whatever their attributes are called."""
        return {f"{prefix}.{name}" if prefix else name
                for prefix, module in self.named_modules() if getattr(module, "holds_positional_parameters", False)
                for name, _ in module.named_parameters()}

    def _device(self) -> torch.device:
        return self.embed.weight.device

    def _gen_index(self, layer: int) -> int:
        return 0 if len(self.code_generators) == 1 else layer

    def _draw(self, generator: torch.Generator | None, device: torch.device, training: bool):
        code_noise = [g.draw(generator, device) for g in self.code_generators]
        layer_noise = [blk.attn.draw(generator, device, training) for blk in self.blocks]
        return code_noise, layer_noise

    def _embed(self, tokens: Tensor, positions: Tensor) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.cfg.d_model)
        if self.ape is not None:
            x = x + self.ape(positions).to(x.dtype)
        return self.drop(x)

    def _vocab_logits(self, y: Tensor) -> Tensor:
        """The output layer (or the transposed token embedding) on final-norm hidden states."""
        return F.linear(y, self.embed.weight) if self.head is None else self.head(y)

    def _logits(self, x: Tensor, tokens: Tensor, memory: RecallMemory | None = None, return_memory: bool = False):
        """Final norm, output layer and, with a recall head, its mixture (then log-probabilities; with
        ``return_memory`` also the head's state after these tokens, None without a head)."""
        y = self.ln_f(x)
        logits = self._vocab_logits(y)
        if self.recall is None:
            return (logits, None) if return_memory else logits
        return self.recall(y, logits, tokens, memory, return_memory=return_memory)

    # parallel form ----------------------------------------------------------------------
    def _run(self, tokens: Tensor, code_noise, layer_noise, return_state: bool, start: int = 0,
             initial: list | None = None, memory: RecallMemory | None = None):
        """The parallel form over tokens at positions start..start+L-1, continuing the per-layer ``initial``
        states and the recall head's ``memory`` (those it returned for the tokens before; None from the start).
        Returns (logits, per-layer states, recall memory); the states only with ``return_state``."""
        x, states = self._trunk(tokens, code_noise, layer_noise, return_state, start, initial)
        if not return_state:
            return self._logits(x, tokens), states, None
        logits, memory = self._logits(x, tokens, memory, return_memory=True)
        return logits, states, memory

    def _trunk(self, tokens: Tensor, code_noise, layer_noise, return_state: bool, start: int = 0,
               initial: list | None = None) -> tuple[Tensor, list]:
        """Embedding and blocks (before the final norm): hidden states (B, L, d) and per-layer states."""
        length = tokens.shape[1]
        x = self._embed(tokens, torch.arange(start, start + length, device=tokens.device))
        codes = [g.codes(n, length, start=start) if start else g.codes(n, length)
                 for g, n in zip(self.code_generators, code_noise)]
        states = []
        for i, blk in enumerate(self.blocks):
            c = codes[self._gen_index(i)] if codes else None
            before = initial[i] if initial is not None else None
            if return_state:
                x, st = blk(x, c, layer_noise[i], return_state=True, initial=before, start=start)
                states.append(st)
            else:
                x = blk(x, c, layer_noise[i], initial=before, start=start)
        return x, states

    def prefills_in_chunks(self) -> bool:
        """Whether a long prompt can be read in chunks (every code generator can start anywhere; ConvSPE's
        noise stream cannot, and learned absolute positions stop at their table)."""
        from .embeddings import LearnedPositions

        return (all(getattr(g, "continues_codes", False) for g in self.code_generators)
                and not isinstance(self.ape, LearnedPositions))

    def forward(self, tokens: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """tokens (B, L) -> logits (B, L, V). ``generator`` seeds SPE noise / performer features."""
        code_noise, layer_noise = self._draw(generator, tokens.device, self.training)
        logits, _, _ = self._run(tokens, code_noise, layer_noise, return_state=False)
        return logits

    @torch.no_grad()
    def recall_gate(self, tokens: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
        """(B, L): the probability mass the recall head moves to copying at each position (None without a
        head). A diagnostic: is the head used, and where."""
        if self.recall is None:
            return None
        code_noise, layer_noise = self._draw(generator, tokens.device, self.training)
        x, _ = self._trunk(tokens, code_noise, layer_noise, return_state=False)
        return self.recall.gate(self.ln_f(x), tokens)

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
        cap = int(max_len or self.cfg.pe.max_len)
        return GenerationState(
            position=0,
            code_states=[g.begin(n) for g, n in zip(self.code_generators, code_noise)],
            layer_noise=layer_noise,
            caches=[blk.init_cache(batch_size, device, cap) for blk in self.blocks],
            recall=self._init_recall(batch_size, device),
        )

    def _init_recall(self, batch_size: int, device: torch.device, prefix: RecallMemory | None = None):
        if self.recall is None:
            return None
        return self.recall.init_memory(batch_size, device, self.embed.weight.dtype, prefix)

    @torch.no_grad()
    def prefill(
        self, tokens: Tensor, generator: torch.Generator | None = None, max_len: int | None = None,
        chunk: int = PREFILL_CHUNK,
    ) -> tuple[Tensor, GenerationState]:
        """Run the parallel form on a prompt (B, L) and return (logits (B, L', V), state at L).

        Equivalent to ``init_state`` + L calls to ``step`` (same draws), but at training speed:
        use it to continue a prompt. A prompt longer than ``chunk`` tokens is read ``chunk`` tokens at a time,
        each continuing the state of the one before, so its memory does not grow with its length (the product
        promises constant memory); then L' = the last chunk's length (the logits of the last positions). A
        softmax model's KV cache still grows, and ConvSPE / learned positions read the prompt in one pass.
        """
        device = tokens.device
        code_noise, layer_noise = self._draw(generator, device, training=False)
        b, length = tokens.shape
        if length <= chunk or not self.prefills_in_chunks():
            logits, states, memory = self._run(tokens, code_noise, layer_noise, return_state=True)
        else:
            states, memory = None, None
            for start in range(0, length, chunk):
                logits, states, memory = self._run(tokens[:, start:start + chunk], code_noise, layer_noise,
                                                   return_state=True, start=start, initial=states, memory=memory)
                if self.cfg.attention.kind == "linear":  # the kernel's state is a view into a per-chunk buffer
                    states = [_detach_state(st) for st in states]
        cap = max(int(max_len or self.cfg.pe.max_len), length)
        return logits, GenerationState(
            position=length,
            code_states=[g.begin(n) for g, n in zip(self.code_generators, code_noise)],
            layer_noise=layer_noise,
            caches=[blk.init_cache(b, device, cap, prefix=st, position=length)
                    for blk, st in zip(self.blocks, states)],
            recall=self._init_recall(b, device, memory),
        )

    def step(self, tokens: Tensor, state: GenerationState) -> tuple[Tensor, GenerationState]:
        """tokens (B,) at position ``state.position`` -> logits (B, V) and the advanced state.

        In eval mode with gradients off (generation), linear attention with pe none / ape /
        spe_sine runs the lean path (:mod:`.lean`: each module's plan, cached in ``state.plan``,
        attention states updated in place); same maths as the generic path below.
        """
        if self.lean_step_applies(state):  # eval + no grad + linear attention: lean path, same maths
            if self.step_graphs and graphs_apply(tokens, self):
                logits = self._graphed_step(tokens, state)
                if logits is not None:
                    return logits, state
            return self._lean_step(tokens, state), state
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
            x, cache = blk.step(x, c, state.layer_noise[i], state.caches[i], n)
            caches.append(cache)
        new = GenerationState(n + 1, code_states, state.layer_noise, caches, recall=state.recall)
        y = self.ln_f(x)
        logits = self._vocab_logits(y)
        if self.recall is not None:
            logits = self.recall.step(y, logits, tokens, state.recall)
        return logits, new

    # lean step ----------------------------------------------------------------------------
    def lean_step_applies(self, state: GenerationState) -> bool:
        """Whether the lean step reproduces :meth:`step` for this call (else the generic path): eval,
        gradients off, float32 without autocast, and every module with a lean step of its own."""
        if self.training or torch.is_grad_enabled():
            return False
        w = self.embed.weight
        if w.dtype != torch.float32 or autocast_on(w.device.type):
            return False
        if not all(g.has_lean_step for g in self.code_generators):
            return False
        return all(blk.lean_step_fits(cache, w.device) for blk, cache in zip(self.blocks, state.caches))

    def step_plan(self, state: GenerationState) -> StepPlan:
        """Every module's lean-step plan for the batch of ``state`` (cached in ``state.plan``)."""
        plan = state.plan
        if plan is not None and plan.is_current(state):  # the per-token path: no grad-mode context here
            return plan
        with torch.no_grad():
            return self._build_step_plan(state)

    def _build_step_plan(self, state: GenerationState) -> StepPlan:
        params = list(self.parameters())
        versions = parameter_versions(params)
        weights_t = self._weights_t.refresh(self, self.embed.weight, params, versions)
        users = [[i for i in range(len(self.blocks)) if self._gen_index(i) == g] for g in range(len(self.code_generators))]
        codes, filters = [], {}
        for g, (gen, noise) in enumerate(zip(self.code_generators, state.code_states)):
            cp = gen.step_plan(noise, [state.layer_noise[i].gate_eps for i in users[g]])
            codes.append(cp)
            filters.update({i: cp.layer_filter(j) for j, i in enumerate(users[g])})
        blocks = [blk.step_plan(state.layer_noise[i], state.caches[i], weights_t, filters.get(i))
                  for i, blk in enumerate(self.blocks)]
        plan = StepPlan(
            params=params, versions=versions, inference=torch.is_inference_mode_enabled(),
            embed=self.embed.weight * math.sqrt(self.cfg.d_model), codes=codes, blocks=blocks,
            caches=list(state.caches), lnf=(self.ln_f.weight, self.ln_f.bias, self.ln_f.eps),
            head=weights_t(self.embed.weight if self.head is None else self.head.weight),
            rotary=next((blk.local for blk in blocks if blk.local is not None), None),
            recall=None if self.recall is None else (weights_t(self.recall.query.weight),
                                                     weights_t(self.recall.key.weight)),
        )
        state.plan = plan
        return plan

    def _lean_step(self, tokens: Tensor, state: GenerationState) -> Tensor:
        """One token for every sequence: tokens (B,) -> logits (B, V); advances ``state`` in place."""
        plan = self.step_plan(state)
        n = state.position
        if self.recall is None:
            logits = self._lean_body(plan, tokens, n)
        else:
            y = self._lean_hidden(plan, tokens, n)
            logits = self.recall.step(y, torch.mm(y, plan.head), tokens, state.recall, plan.recall)
        state.position = n + 1
        return logits

    def _lean_body(self, plan: StepPlan, tokens: Tensor, position: int | Tensor) -> Tensor:
        """The lean step's device work at ``position`` (an int, or a float64 0-d device tensor when captured in
        a CUDA graph: then nothing here may read a value back to the host)."""
        return torch.mm(self._lean_hidden(plan, tokens, position), plan.head)

    def _lean_hidden(self, plan: StepPlan, tokens: Tensor, position: int | Tensor) -> Tensor:
        """The lean step up to the final norm: hidden states (B, d_model)."""
        x = F.embedding(tokens, plan.embed)
        if self.ape is not None:
            pos = position.view(1).long() if isinstance(position, Tensor) else torch.tensor([position], device=tokens.device)
            x = x + self.ape(pos).to(x.dtype)
        for codes in plan.codes:  # SPE codes at n, once per code generator for all the layers using it
            codes.advance(position)
        rotation = plan.rotary.rotation(int(position)) if plan.rotary is not None else None  # once for all windows
        for blk in plan.blocks:
            x = blk(x, position, rotation)
        return F.layer_norm(x, (x.shape[1],), *plan.lnf[:2], plan.lnf[2])

    def _graphed_step(self, tokens: Tensor, state: GenerationState) -> Tensor | None:
        """The lean step replayed from a CUDA graph (captured on first use for this plan), or None when the
        capture failed (then the caller runs the eager lean step; the failure is reported once)."""
        if state.graph is False:
            return None
        plan = self.step_plan(state)
        if state.graph is None or not state.graph.fits(plan, tokens):
            try:
                state.graph = StepGraph(plan, self._lean_body, tokens.shape[0], tokens.device)
            except Exception as exc:  # noqa: BLE001 - any capture failure: keep generating, eagerly
                state.graph = False
                warnings.warn(f"CUDA-graph capture of the generation step failed ({type(exc).__name__}: {exc}); "
                              "using the eager lean step", RuntimeWarning, stacklevel=3)
                return None
        n = state.position
        logits = state.graph(tokens, n)
        state.position = n + 1
        return logits


def build_model(model_cfg: Any, vocab_size: int, time_markers: tuple[int, int, int] | None = None) -> MusicTransformer:
    """Build a model from a model config (a composed ``conf/model`` preset as dict or DictConfig, a
    checkpoint's stored dict, or a :class:`ModelConfig`) and a vocab size: validated here, once.
    ``time_markers``: the tokenizer's (Bar id, first Position id, Position count), which a recall head's bar
    clock reads (``Vocabulary.time_markers()``); a checkpoint's config already holds them."""
    return MusicTransformer(ModelConfig.from_mapping(model_cfg, vocab_size, time_markers))
