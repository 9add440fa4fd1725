"""Does a checkpoint use position and its recent past? `python -m musicgen.evaluation.positional CKPT [MIDI...]`

Three views, for any checkpoint (a learnable part whose parameters never move is not a feature):

1. **The learned positional kernel per head** (PNG): the expected attention kernel as a function of the lag
   n - m, per layer and head, averaged over the head's features. SineSPE: the exact expectation of the
   codes' product, sum_k gain_k^2 cos(2 pi f_k lag + phi_k) / (2K), computed with the model's own code
   generator; ConvSPE: the cross-correlation of its two filters; both as correlations (in [-1, 1]) of the
   query and key codes; gating mixes in a constant, (1 - g) P + g; attention decay multiplies by gamma^lag.
2. **The attention share on the most recent tokens** for queries far past the training length L (default
   [2L, 4L) of real songs): the share of each query's attention weight that falls on its last 64 tokens,
   next to what a uniform average over the context gives (64 / (i + 1)). A model whose attention is a
   running mean scores the uniform share (the shipped model before attention decay: 0.043-0.049).
3. **How far the positional parameters moved** from their initial values (stored in checkpoints trained
   since this diagnostic exists, else rebuilt from the run's seed): mean |change| in units of the initial
   spread, SineSPE periods and gates before/after, decay time constants before/after.

Writes `positional.json`, `positional_kernel.png` and `attention_recent.png` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_savefig, atomic_write_text
from ..config import report_user_errors

__all__ = ["positional_kernels", "recent_attention_share", "parameter_movement", "main"]


# --- 1. kernels ------------------------------------------------------------------------------------------
@torch.no_grad()
def _sine_kernel(gen: Any, lags: torch.Tensor) -> torch.Tensor:
    """(H, d, n_lags) expected Qbar(lag)·Kbar(0) / R of a SineSPE generator, from its own code maths.

    With "noise" z = I / sqrt(2K) (2K orthonormal realisations) the codes' product summed over them is
    exactly the expectation over z ~ N(0, 1/(2K)), per realisation.
    """
    h, d, k = gen.n_heads, gen.head_dim, gen.sines
    eye = torch.eye(2 * k, device=gen.freqs.device).expand(h, d, 2 * k, 2 * k) / math.sqrt(2 * k)
    mq, mk = gen._mixing(eye)  # noqa: SLF001 - the generator's own maths, (H, d, 2K, 2K)
    omega = gen.basis(lags.to(gen.freqs.device))  # (H, n, 2K, d)
    qbar = torch.einsum("hnjd,hdjr->hdnr", omega, mq)
    kbar0 = torch.einsum("hjd,hdjr->hdr", omega[:, 0], mk)
    cov = torch.einsum("hdnr,hdr->hdn", qbar, kbar0)
    power = (qbar[:, :, 0] ** 2).sum(-1).mul((kbar0**2).sum(-1)).sqrt().unsqueeze(-1)  # stationary variances
    return cov / power.clamp(min=1e-30)


@torch.no_grad()
def _conv_kernel(gen: Any, lags: torch.Tensor) -> torch.Tensor:
    """(H, d, n_lags) cross-covariance sum_j wq[j] wk[j + lag] of a ConvSPE generator (0 past the filter)."""
    wq, wk = gen.weight_q.float(), gen.weight_k.float()  # (C, K)
    size = wq.shape[1]
    out = torch.zeros(wq.shape[0], len(lags))
    for i, lag in enumerate(lags.tolist()):
        if lag < size:
            out[:, i] = (wq[:, : size - lag] * wk[:, lag:]).sum(-1)
    power = (wq.square().sum(-1) * wk.square().sum(-1)).sqrt().clamp(min=1e-30).unsqueeze(-1)
    return (out / power).view(gen.n_heads, gen.head_dim, -1)


@torch.no_grad()
def positional_kernels(model: Any, lags: torch.Tensor) -> np.ndarray:
    """(layers, heads, n_lags) expected attention kernel by lag (see the module docstring): the correlation
    of query and key codes at that lag (in [-1, 1]), gated, times the decay; 1 = fully position-blind."""
    out = []
    for i, blk in enumerate(model.blocks):
        attn = blk.attn
        h = attn.n_heads
        kern = torch.ones(h, 1, len(lags))
        if attn.spe is not None:
            gen = model.code_generators[model._gen_index(i)]  # noqa: SLF001
            kern = _sine_kernel(gen, lags) if hasattr(gen, "freqs") else _conv_kernel(gen, lags)
            if attn.spe.gated:
                g = torch.sigmoid(attn.spe.gate.float()).unsqueeze(-1)
                kern = (1 - g) * kern + g
        per_head = kern.mean(1)
        lg = attn.log_gamma()
        if lg is not None:
            per_head = per_head * torch.exp(lg.float().view(-1, 1) * lags.float().view(1, -1))
        out.append(per_head.cpu().numpy())
    return np.stack(out)


# --- 2. attention on recent tokens -----------------------------------------------------------------------
@torch.no_grad()
def recent_attention_share(model: Any, songs: list[list[int]], lo: int, hi: int, recent: int = 64,
                           queries: int = 32, seed: int = 0) -> dict[str, Any]:
    """Share of attention on the last ``recent`` tokens for queries in [lo, hi) of each song (>= hi tokens).

    Returns per layer and head the mean share, and the uniform-average share for the same queries.
    """
    shares: list[np.ndarray] = []  # per song: (layers, heads)
    uniform: list[float] = []
    for ids in songs:
        x = torch.tensor(ids[:hi], dtype=torch.long).unsqueeze(0)
        probes: list[list] = []
        for blk in model.blocks:
            blk.attn.probe = []
            probes.append(blk.attn.probe)
        try:
            model(x, generator=torch.Generator().manual_seed(seed))
        finally:
            for blk in model.blocks:
                blk.attn.probe = None
        picks = torch.linspace(lo, hi - 1, queries).long()
        uniform.append(float(np.mean([min(recent, int(i) + 1) / (int(i) + 1) for i in picks])))
        per_layer = []
        for probe in probes:
            kind, q, k, lg = probe[0]  # the song's one forward
            q, k = q[0].double(), k[0].double()  # (H, L, F)
            scores = q[:, picks] @ k.transpose(-1, -2)  # (H, Q, L)
            j = torch.arange(k.shape[1], dtype=torch.float64)
            lag = picks.double().view(-1, 1) - j.view(1, -1)
            if kind == "softmax":
                scores = (scores / math.sqrt(q.shape[-1])).masked_fill(lag < 0, float("-inf"))
                weights = torch.softmax(scores, dim=-1)
            else:
                weights = scores.masked_fill(lag < 0, 0.0)
                if lg is not None:
                    weights = weights * torch.exp(lg.double().view(-1, 1, 1) * lag.clamp(min=0))
            near = ((lag >= 0) & (lag < recent)).double()
            per_layer.append(((weights * near).sum(-1) / weights.sum(-1)).mean(-1).numpy())
        shares.append(np.stack(per_layer))
    arr = np.stack(shares).mean(0) if shares else np.zeros((0, 0))
    return {"queries": [lo, hi], "recent_tokens": recent, "songs": len(songs),
            "share_by_layer_head": arr.round(4).tolist(), "share_mean": round(float(arr.mean()), 4) if arr.size else None,
            "uniform_share": round(float(np.mean(uniform)), 4) if uniform else None}


# --- 3. parameter movement -------------------------------------------------------------------------------
def _initial_positional(ckpt: Any) -> tuple[dict[str, torch.Tensor], str]:
    stored = ckpt.training_state.get("positional_init")
    if stored:
        return stored, "stored in the checkpoint"
    from ..model import build_model
    from ..inference.parameters import positional_parameters

    torch.manual_seed(int((ckpt.config or {}).get("seed", 0)))
    fresh = build_model(ckpt.model_config, ckpt.model_config["vocab_size"])
    return positional_parameters(fresh), "rebuilt from the run's seed (this checkpoint predates the record)"


def parameter_movement(model: Any, ckpt: Any) -> dict[str, Any]:
    """How far every positional parameter moved from its initial value (see the module docstring)."""
    from ..inference.parameters import positional_parameters

    init, source = _initial_positional(ckpt)
    now = positional_parameters(model)
    rows = {}
    for name, value in now.items():
        start = init.get(name)
        if start is None or start.shape != value.shape:
            rows[name] = {"init": "unknown"}
            continue
        spread = float(start.std()) if start.numel() > 1 else abs(float(start.mean())) or 1.0
        change = (value - start).abs()
        row = {"mean_abs_change": round(float(change.mean()), 5), "max_abs_change": round(float(change.max()), 5),
               "change_in_init_spreads": round(float(change.mean()) / max(spread, 1e-12), 4)}
        if name.endswith(".freqs"):
            period = lambda t: float(torch.median(1.0 / (torch.sigmoid(t) / 2)))  # noqa: E731
            row["median_period_tokens"] = [round(period(start), 1), round(period(value), 1)]
        if name.endswith(".gate"):
            row["mean_gate"] = [round(float(torch.sigmoid(start).mean()), 4), round(float(torch.sigmoid(value).mean()), 4)]
        if name.endswith("decay.log_tau"):
            row["tau_tokens"] = [[round(float(t), 1) for t in start.exp()], [round(float(t), 1) for t in value.exp()]]
        rows[name] = row
    return {"initial_values": source, "parameters": rows}


# --- the command -----------------------------------------------------------------------------------------
def _songs(paths: list[str], tokenizer: Any, need: int, limit: int) -> list[list[int]]:
    from ..generation.prompt import load_prompt

    files: list[Path] = []
    for p in paths:
        path = Path(p)
        files += sorted(f for f in path.rglob("*") if f.suffix.lower() in (".mid", ".midi")) if path.is_dir() else [path]
    songs = []
    for f in files:
        index = f.parent / "index.tsv"
        ids = load_prompt(f, tokenizer, time_signature="index" if index.is_file() or (f.parent.parent / "index.tsv").is_file()
                          else "file").ids
        if len(ids) >= need:
            songs.append(list(ids))
        if len(songs) >= limit:
            break
    return songs


def _plot(kernels: np.ndarray, lags: np.ndarray, share: dict[str, Any] | None, out: Path, length: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = kernels.shape[0]
    fig, axes = plt.subplots(1, layers, figsize=(3.2 * layers, 3), sharey=True, squeeze=False)
    for i, ax in enumerate(axes[0]):
        for h in range(kernels.shape[1]):
            ax.plot(lags, kernels[i, h], label=f"head {h}")
        ax.axvline(length, color="grey", ls=":", lw=1)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(0, float(lags[-1]))
        ax.set_title(f"layer {i}")
        ax.set_xlabel("lag n - m (tokens)")
    axes[0][0].set_ylabel("expected kernel (code correlation)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    files = [str(out / "positional_kernel.png")]
    atomic_savefig(fig, files[0], dpi=110)
    plt.close(fig)
    if share and share.get("share_by_layer_head"):
        arr = np.asarray(share["share_by_layer_head"])
        fig, ax = plt.subplots(figsize=(5, 3))
        for h in range(arr.shape[1]):
            ax.plot(range(arr.shape[0]), arr[:, h], "o-", label=f"head {h}")
        ax.axhline(share["uniform_share"], color="k", ls="--", label="uniform average")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"share on last {share['recent_tokens']} tokens")
        ax.set_title(f"queries in [{share['queries'][0]}, {share['queries'][1]})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(str(out / "attention_recent.png"))
        atomic_savefig(fig, files[-1], dpi=110)
        plt.close(fig)
    return files


@report_user_errors
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m musicgen.evaluation.positional",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a musicgen checkpoint (.pt)")
    parser.add_argument("midi", nargs="*", help="MIDI files or folders for the attention share (none = skip it)")
    parser.add_argument("--out", default="outputs/positional", help="output folder (default: %(default)s)")
    parser.add_argument("--songs", type=int, default=8, help="at most this many songs (default: %(default)s)")
    parser.add_argument("--recent", type=int, default=64, help="'recent' = the last N tokens (default: %(default)s)")
    args = parser.parse_args(argv)
    from ..inference import load_model, resolve_checkpoint

    path = resolve_checkpoint(args.checkpoint)
    loaded = load_model(path, "cpu")
    model, ckpt = loaded.model, loaded.checkpoint
    length = int(ckpt.train_seq_len or 512)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lags = torch.unique(torch.cat([torch.arange(0, 64), torch.logspace(math.log10(64), math.log10(8 * length), 80).long()]))
    kernels = positional_kernels(model, lags)
    report: dict[str, Any] = {"checkpoint": str(path), "train_seq_len": length,
                              "kernel": {"lags": lags.tolist(), "by_layer_head": kernels.round(4).tolist()},
                              "movement": parameter_movement(model, ckpt)}
    share = None
    if args.midi:
        songs = _songs(args.midi, loaded.tokenizer, 4 * length, args.songs)
        if not songs:
            raise ValueError(f"no song of at least {4 * length} tokens among {', '.join(args.midi)}")
        share = recent_attention_share(model, songs, 2 * length, 4 * length, args.recent)
        report["recent_attention"] = share
    report["files"] = _plot(kernels, lags.numpy(), share, out, length)
    atomic_write_text(out / "positional.json", json.dumps(report, indent=1))
    print(f"positional parameters ({report['movement']['initial_values']}):")
    for name, row in report["movement"]["parameters"].items():
        extra = {k: v for k, v in row.items() if k not in ("mean_abs_change", "max_abs_change")}
        print(f"  {name}: mean |change| {row.get('mean_abs_change')}  {extra}")
    if share:
        print(f"attention share on the last {args.recent} tokens, queries in [{2 * length}, {4 * length}) of "
              f"{share['songs']} songs: {share['share_mean']} (uniform average: {share['uniform_share']})")
        for i, row in enumerate(share["share_by_layer_head"]):
            print(f"  layer {i}: " + "  ".join(f"{v:.3f}" for v in row))
    print(f"wrote {out / 'positional.json'}, " + ", ".join(report["files"]))


if __name__ == "__main__":
    sys.exit(main())
