"""Recall head: a pointer over the piece's own past, mixed into the next-token distribution.

Why: music is built on restatement (a phrase answered, a chorus that returns), and restating means finding
where the present context happened before and copying what followed. The linear-attention stack summarises the
past in a fixed-size state that forgets (learned decay), and on the budgets this project can train it did not
learn to copy: teacher-forced, a restated bar was barely easier to predict than a new one (docs/form.md). This
head gives the model that ability directly, as the pointer-sentinel mixture of Merity et al. (2017, "Pointer
Sentinel Mixture Models") and the continuous cache of Grave et al. (2017) give a language model:

* each position i keeps a key ``k_i = W_k y_i`` of its final hidden state y_i (which encodes the context up to
  i) and the token that followed it, x_{i+1};
* at position t a query ``q_t = W_q y_t`` scores the last ``window`` keys; with a bar clock each key also gets a
  learnt score for its lag in bars and whether it sits at the same onset (:class:`BarClock`,
  :class:`BarLagScores`); one more score, the *sentinel* ``q_t . s + b``, stands for "nothing here to copy";
* the softmax over [keys, sentinel] gives a copy distribution (the mass of the keys, spread onto the tokens
  that followed them) and a gate g (one minus the sentinel's mass); the model's output is
  ``log((1 - g) softmax(logits) + g p_copy)``: log-probabilities, which every caller already treats as logits.

The gate is learnt from data: it opens most where the context matches something earlier (docs/form.md
measures where). It is part of the model's likelihood (trained by its NLL,
counted in test NLL), not a decode-time rule. At generation the keys live in a ring buffer of ``window``
entries, so memory and time per token stay constant however long the piece (:class:`RecallMemory`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BarClock", "BarLagScores", "RecallHead", "RecallMemory"]

#: log of the smallest copy probability kept (log 0 would give -inf and NaN gradients)
_LOG_FLOOR = -69.0


@dataclass
class RecallMemory:
    """The head's state for a batch: the last ``window`` positions' keys and the tokens that followed them.

    ``follow`` is 0 (PAD) where nothing is stored yet, and at the newest position, whose next token is not known
    until it arrives (:meth:`RecallHead.step` fills it). ``newest`` is the slot of that position (-1: none yet),
    ``stored`` how many slots hold an entry (the ring has wrapped once it equals ``window``).
    """

    keys: Tensor  # (B, W, key_dim)
    follow: Tensor  # (B, W) long
    newest: int = -1
    stored: int = 0
    #: with a bar clock: each entry's (bar index, onset position in its bar), and the clock after the last token
    bars: Tensor | None = None  # (B, W) long
    onsets: Tensor | None = None  # (B, W) long
    bar_now: Tensor | None = None  # (B,) long
    onset_now: Tensor | None = None  # (B,) long
    #: a decode-time plan's request (a planned form's returning section): add ``focus_bonus`` to the score of
    #: every entry ``focus_lag`` bars back, so the head copies from there; None = the model's own scores
    focus_lag: int | None = None
    focus_bonus: float = 0.0

    def repeat_rows(self, batch_size: int) -> None:
        """One sequence's memory -> the same for ``batch_size`` sequences (own copies), in place."""
        for name in ("keys", "follow", "bars", "onsets", "bar_now", "onset_now"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.expand(batch_size, *t.shape[1:]).contiguous())

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.follow, self.bars, self.onsets,
                                                            self.bar_now, self.onset_now) if t is not None)


@dataclass(frozen=True)
class BarClock:
    """Where each token sits in musical time, read from the token stream itself: the bar index (Bar tokens
    counted) and the onset position inside the bar (the last Position token's value; -1 right after a Bar).
    Why: bars hold different numbers of tokens, so "the same beat, 4 bars ago" is no fixed token lag; on this
    clock it is one offset, and the head learns a score per bar lag (the musical-time relative position that
    SPE, counting tokens, cannot give)."""

    bar_token: int
    position_first: int
    position_count: int

    def _marks(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Which tokens are Bar tokens, and which Position tokens."""
        is_pos = (tokens >= self.position_first) & (tokens < self.position_first + self.position_count)
        return tokens == self.bar_token, is_pos

    def parallel(self, tokens: Tensor, bar0: Tensor | None = None, onset0: Tensor | None = None
                 ) -> tuple[Tensor, Tensor]:
        """tokens (B, L) -> bar index and onset (B, L) after each token, continuing (bar0, onset0) (B,)."""
        b, length = tokens.shape
        is_bar, is_pos = self._marks(tokens)
        bar = torch.cumsum(is_bar.long(), dim=1)
        if bar0 is not None:
            bar = bar + bar0.unsqueeze(1)
        value = torch.where(is_pos, tokens - self.position_first, torch.full_like(tokens, -1))
        index = torch.arange(length, device=tokens.device).expand(b, length)
        last = torch.where(is_bar | is_pos, index, torch.full_like(index, -1)).cummax(dim=1).values
        start = onset0.unsqueeze(1).expand(b, length) if onset0 is not None else torch.full_like(tokens, -1)
        onset = torch.where(last >= 0, value.gather(1, last.clamp_min(0)), start)
        return bar, onset

    def step(self, tokens: Tensor, bar: Tensor, onset: Tensor) -> tuple[Tensor, Tensor]:
        """The clock after one more token per row: tokens, bar, onset (B,) -> bar, onset (B,)."""
        is_bar, is_pos = self._marks(tokens)
        onset = torch.where(is_pos, tokens - self.position_first, torch.where(is_bar, torch.full_like(onset, -1), onset))
        return bar + is_bar.long(), onset


class BarLagScores(nn.Module):
    """The learnt score of a candidate by its lag in bars (0..max_lag, the last for any further) and whether it
    sits at the same onset in its bar: ``score[lag, aligned]``. A positional parameter (it says where to look, as
    SPE's and the decay's do), so it trains in their optimizer group, at their higher rate: at the network's rate
    600 steps moved it by 0.3 at most, too little to tell 8 bars back from 7 against the content score."""

    holds_positional_parameters = True

    def __init__(self, max_lag: int) -> None:
        super().__init__()
        self.score = nn.Parameter(torch.zeros(max_lag + 1, 2))


class RecallHead(nn.Module):
    """Pointer-sentinel recall over the last ``window`` positions (see the module docstring)."""

    def __init__(self, d_model: int, key_dim: int, window: int, clock: BarClock | None = None,
                 max_lag_bars: int = 64) -> None:
        super().__init__()
        self.window = int(window)
        self.key_dim = int(key_dim)
        self.clock = clock
        self.max_lag_bars = int(max_lag_bars)
        #: with a bar clock: the bar-lag scores added to the content score; zero at the start (content alone)
        self.lag = BarLagScores(self.max_lag_bars) if clock is not None else None
        self.query = nn.Linear(d_model, key_dim, bias=False)
        self.key = nn.Linear(d_model, key_dim, bias=False)
        self.sentinel = nn.Parameter(torch.zeros(key_dim))
        #: starts the sentinel far ahead of a window of equal scores, so an untrained head barely copies
        self.sentinel_bias = nn.Parameter(torch.tensor(math.log(self.window) + 3.0))

    def reset_parameters(self) -> None:
        """Query and key start as the same projection, so an untrained head scores hidden-state similarity
        (a continuous cache) rather than noise; called after the model's generic initialisation."""
        with torch.no_grad():
            nn.init.normal_(self.key.weight, std=self.key.in_features ** -0.5)
            self.query.weight.copy_(self.key.weight)
            self.sentinel.zero_()
            self.sentinel_bias.fill_(math.log(self.window) + 3.0)
            if self.lag is not None:
                self.lag.score.zero_()

    def _time_score(self, bar_q: Tensor, onset_q: Tensor, bar_k: Tensor, onset_k: Tensor) -> Tensor:
        """The learnt musical-time score of each (query, key) pair: bar_q/onset_q (B, Q), bar_k/onset_k (B, P)
        -> (B, Q, P). One query (a generation step) looks its keys' scores up in the table; many (the parallel
        form) first take each query's row of scores per key bar (one-hot bars times the bars x bars table of lag
        scores), then gather it per key: a lookup of Q x P indices into a table this small, and its backward,
        cost several times the whole head on a CPU."""
        same = (onset_q.unsqueeze(-1) == onset_k.unsqueeze(-2)).long()
        if bar_q.shape[1] == 1:
            lag = (bar_q.unsqueeze(-1) - bar_k.unsqueeze(-2)).clamp(0, self.max_lag_bars)
            return self.lag.score.view(-1)[lag * 2 + same]
        low = torch.minimum(bar_q.min(), bar_k.min())
        count = int(torch.maximum(bar_q.max(), bar_k.max()) - low) + 1
        ladder = torch.arange(count, device=bar_q.device)
        lag = (ladder.unsqueeze(1) - ladder.unsqueeze(0)).clamp(0, self.max_lag_bars)  # (bars, bars)
        table = torch.cat([self.lag.score[lag, 0], self.lag.score[lag, 1]], dim=1)  # (bars, 2 bars): apart | aligned
        rows = torch.matmul(F.one_hot(bar_q - low, count).to(table.dtype), table)  # (B, Q, 2 bars)
        column = (bar_k - low).unsqueeze(1) + count * same  # (B, Q, P)
        return torch.gather(rows, 2, column)

    # parallel form ----------------------------------------------------------------------------------
    def forward(self, hidden: Tensor, logits: Tensor, tokens: Tensor, memory: RecallMemory | None = None,
                return_memory: bool = False):
        """hidden (B, L, d), logits (B, L, V), tokens (B, L) -> log-probabilities (B, L, V) [, memory].

        ``memory``: the state returned for the tokens just before these (a prompt read in chunks); its newest
        entry's follower is ``tokens[:, 0]``.
        """
        scores, q, candidates = self._parallel_scores(hidden, tokens, memory)
        length = hidden.shape[1]
        out = self._mix(scores, q, logits, candidates.follow.unsqueeze(1).expand(-1, length, -1))
        if not return_memory:
            return out
        keep = min(self.window, candidates.follow.shape[1])
        new = RecallMemory(keys=candidates.keys[:, -keep:].detach().clone(), follow=candidates.follow[:, -keep:].clone(),
                           newest=keep - 1, stored=keep)
        if self.clock is not None:
            new.bars, new.onsets = candidates.bars[:, -keep:].clone(), candidates.onsets[:, -keep:].clone()
            new.bar_now, new.onset_now = candidates.bar_now, candidates.onset_now
        return out, new

    def gate(self, hidden: Tensor, tokens: Tensor) -> Tensor:
        """g (B, L): the probability mass the head moves to copying, per position (diagnostics)."""
        with torch.no_grad():
            scores, q, _ = self._parallel_scores(hidden, tokens, None)
            return 1.0 - self._attend(scores, q)[..., -1]

    def _parallel_scores(self, hidden: Tensor, tokens: Tensor, memory: RecallMemory | None
                         ) -> tuple[Tensor, Tensor, RecallMemory]:
        """Scores (B, L, P) of every query against every candidate (-inf where not visible), the queries, and the
        candidates (the memory's entries, oldest first, then these tokens' own) with the clock after the last."""
        length = hidden.shape[1]
        q = self.query(hidden)
        k = self.key(hidden)
        follow = torch.zeros_like(tokens)
        follow[:, :-1] = tokens[:, 1:]
        continuing = memory is not None and memory.newest >= 0
        bar = onset = None
        if self.clock is not None:
            bar, onset = self.clock.parallel(tokens, *((memory.bar_now, memory.onset_now) if continuing else ()))
        past = 0
        if continuing:
            old_keys, old_follow, old_bars, old_onsets = self._ordered(memory)
            old_follow = old_follow.clone()
            old_follow[:, -1] = tokens[:, 0]
            past = old_keys.shape[1]
            k = torch.cat([old_keys.to(k.dtype), k], dim=1)
            follow = torch.cat([old_follow, follow], dim=1)
        candidates = RecallMemory(keys=k, follow=follow)
        scores = torch.einsum("bqk,bpk->bqp", q, k) / math.sqrt(self.key_dim)
        if self.clock is not None:
            candidates.bars = torch.cat([old_bars, bar], dim=1) if continuing else bar
            candidates.onsets = torch.cat([old_onsets, onset], dim=1) if continuing else onset
            candidates.bar_now, candidates.onset_now = bar[:, -1].clone(), onset[:, -1].clone()
            scores = scores + self._time_score(bar, onset, candidates.bars, candidates.onsets).to(scores.dtype)
        # candidate p sits at offset p - past from these tokens' start: visible to query t when it lies strictly
        # before t, within the window, and its follower is known
        qpos = torch.arange(length, device=hidden.device).unsqueeze(1)
        kpos = torch.arange(past + length, device=hidden.device).unsqueeze(0) - past
        visible = ((kpos < qpos) & (kpos >= qpos - self.window)).unsqueeze(0) & (follow != 0).unsqueeze(1)
        return scores.masked_fill(~visible, float("-inf")), q, candidates

    def _attend(self, scores: Tensor, q: Tensor) -> Tensor:
        """Softmax over [scores, sentinel]: (B, L, P + 1), the last column the sentinel's mass (1 - g)."""
        sentinel = (q @ self.sentinel + self.sentinel_bias).unsqueeze(-1)
        return torch.softmax(torch.cat([scores, sentinel], dim=-1), dim=-1)

    def _mix(self, scores: Tensor, q: Tensor, logits: Tensor, follow: Tensor) -> Tensor:
        """log((1 - g) p_model + g p_copy). scores (B, L, P) with -inf where hidden, follow (B, L, P) the token
        each candidate would copy."""
        attn = self._attend(scores, q)
        copy = torch.zeros_like(logits).scatter_add_(-1, follow, attn[..., :-1].to(logits.dtype))
        keep = attn[..., -1:].to(logits.dtype)  # 1 - g: the sentinel's mass
        model = F.log_softmax(logits, dim=-1) + torch.log(keep.clamp_min(1e-30))
        copied = torch.log(copy.clamp_min(math.exp(_LOG_FLOOR)))
        return torch.logaddexp(model, copied)

    # recurrent form ---------------------------------------------------------------------------------
    def init_memory(self, batch_size: int, device: torch.device, dtype: torch.dtype,
                    prefix: RecallMemory | None = None) -> RecallMemory:
        """An empty ring of ``window`` slots, or one holding a prefill's ``prefix`` (oldest first)."""
        keys = torch.zeros(batch_size, self.window, self.key_dim, device=device, dtype=dtype)
        follow = torch.zeros(batch_size, self.window, dtype=torch.long, device=device)
        memory = RecallMemory(keys, follow, -1)
        if self.clock is not None:
            memory.bars = torch.zeros(batch_size, self.window, dtype=torch.long, device=device)
            memory.onsets = torch.full((batch_size, self.window), -1, dtype=torch.long, device=device)
            memory.bar_now = torch.zeros(batch_size, dtype=torch.long, device=device)
            memory.onset_now = torch.full((batch_size,), -1, dtype=torch.long, device=device)
        if prefix is not None and prefix.newest >= 0:
            old_keys, old_follow, old_bars, old_onsets = self._ordered(prefix)
            n = old_keys.shape[1]
            keys[:, :n] = old_keys.to(dtype)
            follow[:, :n] = old_follow
            if self.clock is not None:
                memory.bars[:, :n], memory.onsets[:, :n] = old_bars, old_onsets
                memory.bar_now, memory.onset_now = prefix.bar_now.clone(), prefix.onset_now.clone()
            memory.newest, memory.stored = n - 1, n
        return memory

    @staticmethod
    def _ordered(memory: RecallMemory) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """The stored entries (keys, followers, bars, onsets) oldest first (a ring that has wrapped starts after
        its newest slot); bars and onsets are None without a bar clock."""
        w = memory.keys.shape[1]
        parts = (memory.keys, memory.follow, memory.bars, memory.onsets)
        if memory.stored < w or memory.newest == w - 1:  # entries 0..newest, oldest first
            n = memory.newest + 1
            return tuple(t[:, :n] if t is not None else None for t in parts)  # type: ignore[return-value]
        order = (torch.arange(w, device=memory.keys.device) + memory.newest + 1) % w
        return tuple(t[:, order] if t is not None else None for t in parts)  # type: ignore[return-value]

    def step(self, hidden: Tensor, logits: Tensor, tokens: Tensor, memory: RecallMemory,
             weights: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """One position for every sequence: hidden (B, d), logits (B, V), tokens (B,) the inputs of this step ->
        log-probabilities (B, V). Updates ``memory`` in place: the newest entry learns its follower (this
        step's token), then this position's key becomes the newest entry, pending its own follower.
        ``weights``: the query and key projections transposed (the lean step's), else the Linear layers."""
        if memory.newest >= 0:
            memory.follow[:, memory.newest] = tokens
        if weights is None:
            q, k = self.query(hidden), self.key(hidden)
        else:
            q, k = torch.mm(hidden, weights[0]), torch.mm(hidden, weights[1])
        scores = torch.einsum("bwk,bk->bw", memory.keys, q) / math.sqrt(self.key_dim)
        if self.clock is not None:
            memory.bar_now, memory.onset_now = self.clock.step(tokens, memory.bar_now, memory.onset_now)
            time = self._time_score(memory.bar_now.unsqueeze(1), memory.onset_now.unsqueeze(1), memory.bars,
                                    memory.onsets)[:, 0]
            scores = scores + time.to(scores.dtype)
            if memory.focus_lag is not None:
                at = (memory.bar_now.unsqueeze(1) - memory.bars) == memory.focus_lag
                scores = scores + memory.focus_bonus * at.to(scores.dtype)
        scores = scores.masked_fill(memory.follow == 0, float("-inf"))
        out = self._mix(scores.unsqueeze(1), q.unsqueeze(1), logits.unsqueeze(1), memory.follow.unsqueeze(1))[:, 0]
        slot = (memory.newest + 1) % self.window
        memory.keys[:, slot] = k.to(memory.keys.dtype)
        memory.follow[:, slot] = 0
        if self.clock is not None:
            memory.bars[:, slot], memory.onsets[:, slot] = memory.bar_now, memory.onset_now
        memory.newest = slot
        memory.stored = min(memory.stored + 1, self.window)
        return out
