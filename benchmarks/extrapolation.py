"""Issue "A model that listens": which positional scheme keeps a model musical far past its training length L?

Every variant trains with the SAME budget (steps x batch x seq_len training tokens, printed and recorded) on
the POP909 train split by running `python train.py <variant's overrides> train.seq_len=L train.max_steps=S ...`
as a subprocess (checkpoints in `<runs>/<variant>/`), then gets seven measurements:

1. **NLL by position on single test songs** up to `--length-factor` x L (default 8L), with exactly the code of
   evaluate.py (`musicgen.evaluation.report.likelihood_report`): buckets [0,L), [L/2,L), [L,2L), [2L,4L), [4L,8L),
   unigram baseline on the same targets;
2. **NLL on streams of concatenated test songs** of `--stream-factor` x L tokens (default 40L): consecutive
   test songs joined into one token sequence (the BOS of every following song and the EOS of every preceding
   one are dropped, so a stream reads like one long piece, as free generation with EOS off writes; a song's
   metre and tempo tokens stay as they are), each stream scored in one parallel forward (float32, no grad, SPE
   noise / random features from a fixed-seed generator, batch 1). Buckets [0,L), [L/2,L), [4L,8L), [8L,16L),
   [16L,40L) and the ratio NLL[16L,40L) / NLL[L/2,L) (>1: the model gets worse the longer it listens);
3. **Attention share on the last 64 tokens** for queries in [2L,4L) of test songs of >= 4L tokens
   (`musicgen.evaluation.positional.recent_attention_share`, on the CPU) next to the share a uniform
   running mean gives;
4. **Positional parameter movement** from init (`musicgen.evaluation.positional.parameter_movement`);
5. **Free generation**: one piece of `--gen-tokens` tokens per `--gen-seeds` seed (EOS off, no bar limit, the
   README's long-piece call), statistics per window of 16 four-beat bars (`bar_window_statistics`,
   `within_range`): bars reached, min/median/max of notes per bar, H4, groove, scale share, loops (same
   onset and pitch), guard actions;
6. **Continuation fidelity**: `benchmarks/long_pieces.py`'s `continuations` on `--prompts` POP909 test songs
   ($MUSICGEN_SHARED_DATA/pop909): key / register / density / groove distance of 16 generated bars to the
   8-bar prompt, next to the same distances for the song's own next 16 bars;
7. (optional, `--samples N`, the earlier drift measure) music statistics per token window of N generations.

Variants (`VARIANTS` below, a name -> Hydra overrides mapping; any other conf/model preset name `X` means
`model=X`): ape, spe_sine_gated, spe_conv (ungated), decay (no PE, learned attention decay), and
spe_sine_gated_decay (the default model). Each keeps its preset's feature map (performer for all but
spe_sine_gated_decay, which uses elu); add `--model-overrides model.attention.feature_map=elu` to compare all
with one feature map.

Outputs: docs/extrapolation.md (one table per measurement, the command and the budget),
docs/extrapolation.png (NLL vs position on single songs), docs/extrapolation_streams.png (NLL vs position in
the streams), benchmarks/results/extrapolation.json (everything). `--docs-dir`/`--results` send them elsewhere.

Resume: a variant whose last.pt reached S steps is not retrained, one that stopped earlier continues from its
last.pt (train.resume=auto); every finished measurement is stored in `<runs>/<variant>/measurements.json`
(keyed by its settings and the checkpoint), so an interrupted run (a time limit) is simply started again with
the same command and only does what is missing. `--recompute` ignores the stored measurements.

A meaningful budget: the issue asks for at least ~10M training tokens per variant: the defaults
`--steps 2500 --batch-size 8 --seq-len 512` give 10,240,000 tokens (an H200 trains these small models at ~220k
tokens/s in fp32: ~1 min per variant plus start-up and validation). Free generation is the slow part on a GPU
(~1.5-2 ms per token at batch 1: ~35 s per 20,000-token piece, 15 pieces for 5 variants x 3 seeds);
`--gen-batched` samples all seeds' pieces in one batch (num_samples = number of seeds, seeded with the first
seed), which costs about one piece per variant. The whole experiment on a GPU (~12-15 min of device time):

    python -m benchmarks.extrapolation --device cuda --gen-batched

Where one command may run at most 10 minutes, run it first with `--skip-generation --skip-continuation`
(trains the 5 variants, NLL, streams, attention share, parameter movement) and then exactly as above: the second
run reuses the checkpoints and stored measurements and only adds generation and continuations (12 prompts x 2
x 16 bars, ~30 s per variant). If a time limit cuts a command, run it again: it resumes (SIGTERM stops
train.py cleanly, which saves last.pt). Keep the same --runs-dir. On a CPU, a smaller model and budget, e.g.

    python -m benchmarks.extrapolation --steps 600 --batch-size 8 --gen-tokens 5000 \
        --model-overrides "model.n_layers=2 model.d_model=128 model.n_heads=2 model.d_ff=512"

Smoke test (a minute; outputs in /tmp/x):

    python -m benchmarks.extrapolation --steps 2 --seq-len 32 --length-factor 2 --stream-factor 4 --variants ape,decay --max-files 30 --gen-tokens 200 --gen-seeds 1 --prompts 1 --model-overrides "model.n_layers=1 model.d_model=32 model.n_heads=2 model.d_ff=64" --runs-dir /tmp/x --docs-dir /tmp/x --results /tmp/x/r.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.common import RESULTS, shared_data

REPO = Path(__file__).resolve().parents[1]

#: variant name -> Hydra overrides of train.py. `++` adds the key where the preset does not list it
#: (kept from when conf/model/none.yaml did not list attention.decay; harmless now that it inherits _base.yaml).
VARIANTS: dict[str, list[str]] = {
    "ape": ["model=ape"],
    "spe_sine_gated": ["model=spe_sine_gated"],
    "spe_conv": ["model=spe_conv"],
    "decay": ["model=none", "++model.attention.decay=learned"],
    "spe_sine_gated_decay": ["model=spe_sine_gated_decay"],
}
DEFAULT_RUNS = RESULTS / "extrapolation_runs"
GEN_KEYS = ("notes_per_bar", "h4", "groove", "scale_share", "max_same_onset_pitch")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help=f"comma-separated: {', '.join(VARIANTS)} or any conf/model preset name")
    p.add_argument("--steps", type=int, default=2500,
                   help="optimizer steps per variant (the budget knob; 2500 x 8 x 512 = 10.2M tokens)")
    p.add_argument("--batch-size", type=int, default=8, help="crops per step")
    p.add_argument("--seq-len", type=int, default=512, help="training length L")
    p.add_argument("--length-factor", type=int, default=8, help="NLL by position on single songs up to this many L")
    p.add_argument("--stream-factor", type=int, default=40,
                   help="length of the concatenated-song streams in L (0 = skip the streams)")
    p.add_argument("--streams", type=int, default=0, help="at most this many streams (0 = as many as the split gives)")
    p.add_argument("--share-songs", type=int, default=8,
                   help="test songs of >= 4L tokens for the attention share (0 = skip it)")
    p.add_argument("--gen-tokens", type=int, default=20000, help="tokens per freely generated piece")
    p.add_argument("--gen-seeds", type=int, nargs="+", default=[5, 7, 9], help="one free piece per seed")
    p.add_argument("--gen-batched", action="store_true",
                   help="sample the pieces of all seeds in one batch seeded with the first seed (GPU: ~1/3 the time)")
    p.add_argument("--prompts", type=int, default=12, help="POP909 test songs to continue (0 = skip)")
    p.add_argument("--continuation-seed", type=int, default=1, help="seed of the continuations")
    p.add_argument("--skip-generation", action="store_true", help="no free generation")
    p.add_argument("--skip-continuation", action="store_true", help="no continuation fidelity")
    p.add_argument("--samples", type=int, default=0,
                   help="the earlier drift measure: generated pieces of length_factor*L tokens (0 = skip)")
    p.add_argument("--drift-window", type=int, default=None, help="tokens per drift window (default: L)")
    p.add_argument("--data-root", default=None,
                   help="POP909 folder (default: $MUSICGEN_SHARED_DATA/pop909 or <repo>/../shared/data/pop909)")
    p.add_argument("--max-files", type=int, default=None, help="use only the first N POP909 files (quick tests)")
    p.add_argument("--eval-max-files", type=int, default=None, help="evaluate only the first N test songs")
    p.add_argument("--eval-batch-size", type=int, default=4, help="crops of length_factor*L per scoring pass")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS), help="checkpoints, token cache, train logs, measurements")
    p.add_argument("--docs-dir", default=str(REPO / "docs"), help="where extrapolation.md/.png go")
    p.add_argument("--results", default=str(RESULTS / "extrapolation.json"), help="JSON results file")
    p.add_argument("--model-overrides", default="", help='extra Hydra overrides, e.g. "model.n_layers=1 ..."')
    p.add_argument("--train-overrides", default="", help='more Hydra overrides for train.py, e.g. "train.lr=1e-3"')
    p.add_argument("--device", default="auto", help="device for training, scoring and sampling")
    p.add_argument("--seed", type=int, default=1234, help="scoring/sampling seed (training uses the config seed)")
    p.add_argument("--skip-train", action="store_true", help="only evaluate existing checkpoints")
    p.add_argument("--recompute", action="store_true", help="ignore measurements stored by an earlier run")
    args = p.parse_args(argv)
    if args.max_files is not None and args.max_files < 1:
        p.error("--max-files must be >= 1")
    if args.length_factor < 1 or args.stream_factor < 0 or args.seq_len < 2:
        p.error("need --length-factor >= 1, --stream-factor >= 0, --seq-len >= 2")
    return args


def variant_overrides(name: str) -> list[str]:
    """Hydra overrides that select variant `name` (a VARIANTS entry or a conf/model preset)."""
    if name in VARIANTS:
        return list(VARIANTS[name])
    if (REPO / "conf" / "model" / f"{name}.yaml").exists():
        return [f"model={name}"]
    raise SystemExit(f"error: unknown variant {name!r} (known: {', '.join(VARIANTS)} or a conf/model preset)")


def _checkpoint_step(path: Path) -> int:
    from musicgen.inference import load_checkpoint

    try:
        return load_checkpoint(path).step
    except (OSError, ValueError):
        return -1


def train_variant(variant: str, args: argparse.Namespace, runs: Path, data_root: Path) -> dict[str, Any]:
    """Train one variant to args.steps (or find it done); returns {"steps", "seconds", "skipped", "overrides"}."""
    ckpt_dir = runs / variant
    last = ckpt_dir / "last.pt"
    timing_path = ckpt_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"seconds": 0.0}
    overrides = variant_overrides(variant)
    step = _checkpoint_step(last) if last.exists() else -1
    if step >= args.steps or args.skip_train:
        if step < 0:
            raise SystemExit(f"error: {last}: no checkpoint to evaluate (run without --skip-train)")
        print(f"[{variant}] already trained ({step} steps), skipping training")
        return {"steps": step, "seconds": timing.get("seconds"), "skipped": True,
                "overrides": timing.get("overrides", overrides)}
    steps = int(args.steps)
    cmd = [sys.executable, str(REPO / "train.py"), *overrides, f"train.seq_len={args.seq_len}",
           f"train.max_steps={steps}", f"train.batch_size={args.batch_size}", f"train.ckpt_dir={ckpt_dir}",
           "train.resume=auto", f"train.warmup_steps={max(1, min(500, steps // 10))}",
           f"train.val_every={max(1, min(500, steps // 4))}", f"train.ckpt_every={max(1, min(500, steps))}",
           f"train.val_length_factor={args.length_factor}", "logger=none", f"data.root={data_root}",
           f"data.cache_dir={runs / 'cache'}", f"device={args.device}", f"hydra.run.dir={ckpt_dir / 'hydra'}"]
    if args.max_files:
        cmd.append(f"data.max_files={args.max_files}")
    extra = shlex.split(args.model_overrides) + shlex.split(args.train_overrides)
    cmd += extra
    print(f"[{variant}] training: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env)
    try:
        returncode = proc.wait()
    except BaseException:  # SIGTERM (a time limit) or Ctrl-C: let train.py save last.pt, the rerun resumes from it
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        seconds = time.perf_counter() - started
        timing_path.write_text(json.dumps({**timing, "seconds": float(timing.get("seconds") or 0.0) + seconds,
                                           "overrides": overrides + extra}, indent=1))
        raise
    seconds = time.perf_counter() - started
    if returncode != 0:
        raise SystemExit(f"error: training {variant} failed (exit code {returncode}); see the output above")
    total = float(timing.get("seconds") or 0.0) + seconds  # a resumed run adds up its pieces
    timing_path.write_text(json.dumps({"seconds": total, "steps": steps, "batch_size": args.batch_size,
                                       "seq_len": args.seq_len, "overrides": overrides + extra}, indent=1))
    return {"steps": _checkpoint_step(last), "seconds": total, "skipped": False, "overrides": overrides + extra}


# --------------------------------------------------------------------------------------------------------- #
# Stored measurements (resume)
# --------------------------------------------------------------------------------------------------------- #
def _plain(value: Any) -> Any:
    """JSON round trip (numpy scalars/arrays -> Python), NaN kept."""
    def default(o: Any) -> Any:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
        return str(o)
    return json.loads(json.dumps(value, default=default))


class Measurements:
    """`<runs>/<variant>/measurements.json`: finished measurements keyed by name, settings and checkpoint."""

    def __init__(self, folder: Path, checkpoint: Path, step: int, fresh: bool) -> None:
        self.path = folder / "measurements.json"
        st = checkpoint.stat()
        self.ckpt = {"step": int(step), "bytes": st.st_size, "mtime": int(st.st_mtime)}
        self.data: dict[str, Any] = {}
        if self.path.exists() and not fresh:
            try:
                self.data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.data = {}

    def get(self, variant: str, name: str, settings: dict[str, Any], compute: Callable[[], Any]) -> Any:
        key = json.dumps({"name": name, "settings": settings, "checkpoint": self.ckpt}, sort_keys=True)
        if key in self.data:
            print(f"[{variant}] {name}: stored by an earlier run", flush=True)
            return self.data[key]
        started = time.perf_counter()
        value = _plain(compute())
        print(f"[{variant}] {name}: {time.perf_counter() - started:.1f} s", flush=True)
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        tmp.replace(self.path)
        return value


# --------------------------------------------------------------------------------------------------------- #
# Measurements
# --------------------------------------------------------------------------------------------------------- #
def stream_edges(L: int, factor: int) -> list[tuple[int, int]]:
    """[0,L), [L/2,L), then [4L,8L), [8L,16L), ... with the last bucket ending at factor*L ([16L,40L) at 40)."""
    top = factor * L
    far, p = [], 4
    while p <= factor // 2:
        far.append(p)
        p *= 2
    if not far:
        far = [max(1, factor // 2)]
    edges = [(0, L), (L // 2, L)]
    marks = far + [factor]
    edges += [(a * L, b * L) for a, b in zip(marks[:-1], marks[1:]) if a * L < top]
    return edges


def build_streams(cache: Any, length: int, limit: int) -> tuple[list[np.ndarray], list[int]]:
    """Streams of `length + 1` tokens of consecutive test songs (BOS of later songs and EOS dropped at joins)."""
    vocab = cache.vocab
    songs = cache.split("test")
    streams, used = [], []
    i = 0
    while i < len(songs) and (not limit or len(streams) < limit):
        parts, n, j = [], 0, i
        while n < length + 1 and j < len(songs):
            ids = np.asarray(cache.song_tokens(songs[j]), dtype=np.int64)
            if j > i and len(ids) and ids[0] == vocab.bos_id:
                ids = ids[1:]
            if len(ids) and ids[-1] == vocab.eos_id:
                ids = ids[:-1]
            parts.append(ids)
            n += len(ids)
            j += 1
        if n < length + 1:
            break
        streams.append(np.concatenate(parts)[: length + 1])
        used.append(j - i)
        i = j
    return streams, used


def stream_nll(model: Any, cache: Any, L: int, factor: int, limit: int, device: Any, seed: int) -> dict[str, Any]:
    """Mean NLL by position over the streams (one parallel forward per stream) and the bucket table."""
    import torch
    import torch.nn.functional as F

    length = factor * L
    streams, used = build_streams(cache, length, limit)
    nll_sum = np.zeros(length)
    count = np.zeros(length, dtype=np.int64)
    with torch.no_grad():
        for s in streams:
            x = torch.from_numpy(s).unsqueeze(0).to(device)
            g = torch.Generator(device=device).manual_seed(seed)
            logits = model(x[:, :-1], generator=g).float()
            nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")[0]
            nll_sum += nll.double().cpu().numpy()
            count += 1
            del logits, nll
    buckets = {f"[{a},{b})": (float(nll_sum[a:b].sum() / count[a:b].sum()) if count[a:b].sum() else float("nan"))
               for a, b in stream_edges(L, factor)}
    keys = list(buckets)
    ratio = buckets[keys[-1]] / buckets[keys[1]] if buckets[keys[1]] else float("nan")
    bin_size = max(1, L // 16)
    bins = [float(nll_sum[a:a + bin_size].sum() / max(1, count[a:a + bin_size].sum())) if count[a:a + bin_size].sum()
            else None for a in range(0, length, bin_size)]
    return {"streams": len(streams), "songs_per_stream": used, "length": length, "buckets": buckets,
            "ratio_last_over_ref": ratio, "ratio_name": f"{keys[-1]}/{keys[1]}", "curve_bin": bin_size,
            "curve": bins, "joins": "BOS of each following song and EOS of each preceding song dropped"}


def share_songs(cache: Any, need: int, limit: int) -> list[list[int]]:
    out = []
    for song in cache.split("test"):
        if song.length >= need:
            out.append([int(t) for t in cache.song_tokens(song)[:need]])
        if len(out) >= limit:
            break
    return out


def generation_plan(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """[(label, settings)] of the pieces to generate: one per seed, or one batch of len(seeds) pieces."""
    if args.gen_batched:
        return [(f"{args.gen_seeds[0]}#{i}", {"seed": args.gen_seeds[0], "row": i, "batch": len(args.gen_seeds)})
                for i in range(len(args.gen_seeds))]
    return [(str(s), {"seed": s}) for s in args.gen_seeds]


def piece_statistics(piece: Any, seconds: float) -> dict[str, Any]:
    from musicgen.evaluation.bar_windows import TARGET_RANGE, bar_window_statistics, within_range

    stats = bar_window_statistics(piece.midi)

    def outside(w: Any) -> bool:
        return any((v := getattr(w, k)) != v or (lo is not None and v < lo) or (hi is not None and v > hi)
                   for k, (lo, hi) in TARGET_RANGE.items())
    beats = max((n.start for inst in piece.midi.instruments for n in inst.notes), default=0) / piece.midi.ticks_per_beat
    summary = {}
    for k in GEN_KEYS:
        vals = [float(getattr(s, k)) for s in stats]
        vals = [v for v in vals if v == v]
        summary[k] = [round(float(np.min(vals)), 4), round(float(np.median(vals)), 4),
                      round(float(np.max(vals)), 4)] if vals else None
    return {"tokens": len(piece.ids), "bars_4_beats": int(beats // 4), "notes": piece.n_notes,
            "windows": len(stats), "windows_outside": sum(map(outside, stats)), "summary": summary,
            "range_check": within_range(stats),
            "guards_acted": dict((piece.guards or {}).get("acted", {})), "wall_s": round(seconds, 1),
            "per_window": [s.to_dict() for s in stats]}


def generate_pieces(path: Path, args: argparse.Namespace, device: str, settings: dict[str, Any]) -> dict[str, Any]:
    from musicgen.generation import generate

    started = time.perf_counter()
    n = int(settings.get("batch", 1))
    pieces = generate(str(path), tokens=args.gen_tokens, bars=None, allow_eos=False, seed=settings["seed"],
                      num_samples=n, progress=False, log=None, device=device)
    seconds = (time.perf_counter() - started) / n
    return {str(i): piece_statistics(p, seconds) for i, p in enumerate(pieces)}


def evaluate_variant(variant: str, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """All measurements of one variant (each stored on finishing, reused by a rerun)."""
    import torch

    from musicgen.evaluation.positional import parameter_movement, recent_attention_share
    from musicgen.evaluation.drift_report import drift_report
    from musicgen.evaluation.eval_cache import open_eval_cache
    from musicgen.evaluation.likelihood_report import likelihood_report
    from musicgen.inference import load_model, resolve_device

    device = str(resolve_device(args.device))
    path = runs / variant / "last.pt"
    loaded = load_model(path, device)
    model, vocab, ckpt = loaded.model, loaded.vocab, loaded.checkpoint
    L = int(ckpt.train_seq_len or args.seq_len)
    store = Measurements(runs / variant, path, ckpt.step, args.recompute)
    cache = open_eval_cache(ckpt.config, vocab, progress=False)
    out: dict[str, Any] = {"train_len": L, "n_params": sum(p.numel() for p in model.parameters()), "step": ckpt.step}

    def nll() -> dict[str, Any]:
        lik = likelihood_report(model, cache, L, split="test", length_factor=args.length_factor,
                                batch_size=args.eval_batch_size, device=device, max_files=args.eval_max_files,
                                seed=args.seed)
        return {"buckets": lik.all_buckets(), "unigram_buckets": lik.all_buckets("unigram"),
                "ratio_last_over_ref": lik.extrapolation_ratio, "report": lik.to_dict()}

    out["nll"] = store.get(variant, "nll_by_position", {"factor": args.length_factor, "seed": args.seed,
                                                         "max_files": args.eval_max_files}, nll)
    print(f"[{variant}] NLL by position: " + "  ".join(f"{k}: {v:.3f}" for k, v in out["nll"]["buckets"].items()),
          flush=True)
    if args.stream_factor:
        out["streams"] = store.get(variant, "streams", {"factor": args.stream_factor, "limit": args.streams,
                                                        "seed": args.seed},
                                   lambda: stream_nll(model, cache, L, args.stream_factor, args.streams, device,
                                                      args.seed))
        print(f"[{variant}] streams ({out['streams']['streams']} x {out['streams']['length']} tokens): "
              + "  ".join(f"{k}: {v:.3f}" for k, v in out["streams"]["buckets"].items())
              + f"  ratio {out['streams']['ratio_name']}: {out['streams']['ratio_last_over_ref']:.3f}", flush=True)
    cpu_model = model if str(device) == "cpu" else load_model(path, "cpu").model  # the share builds CPU tensors
    if args.share_songs:
        def share() -> dict[str, Any]:
            songs = share_songs(cache, 4 * L, args.share_songs)
            if not songs:
                return {"songs": 0, "share_mean": None, "uniform_share": None,
                        "note": f"no test song of >= {4 * L} tokens"}
            return recent_attention_share(cpu_model, songs, 2 * L, 4 * L)
        out["attention_share"] = store.get(variant, "attention_share", {"songs": args.share_songs}, share)
        print(f"[{variant}] attention share on the last 64 tokens, queries [2L,4L): "
              f"{out['attention_share'].get('share_mean')} (uniform {out['attention_share'].get('uniform_share')})")
    out["movement"] = store.get(variant, "parameter_movement", {}, lambda: parameter_movement(cpu_model, ckpt))
    model = cpu_model = None  # free them before the next variant (the closures above have run)
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    if not args.skip_generation and args.gen_tokens > 0:
        out["generation"] = {}
        for label, settings in generation_plan(args):
            key = {"tokens": args.gen_tokens, **{k: v for k, v in settings.items() if k != "row"}}
            pieces = store.get(variant, f"generation seed {settings['seed']}"
                               + (f" x{settings['batch']}" if "batch" in settings else ""), key,
                               lambda s=settings: generate_pieces(path, args, device, s))
            out["generation"][label] = pieces[str(settings.get("row", 0))]
            g = out["generation"][label]
            print(f"[{variant}] free piece {label}: {g['tokens']} tokens, {g['bars_4_beats']} bars, {g['windows']} "
                  f"windows, all inside POP909's range: {g['range_check']['all_inside']}", flush=True)
    if not args.skip_continuation and args.prompts > 0:
        from benchmarks.long_pieces import continuations

        out["continuation"] = store.get(variant, "continuation", {"prompts": args.prompts,
                                                                  "seed": args.continuation_seed},
                                        lambda: continuations(str(path), args.prompts, args.continuation_seed))
    if args.samples:
        window = int(args.drift_window or L)
        out["drift"] = store.get(variant, "drift", {"samples": args.samples, "window": window, "seed": args.seed,
                                                    "tokens": args.length_factor * L},
                                 lambda: drift_report(path, args.length_factor * L, samples=args.samples,
                                                      window=window, seed=args.seed, device=device).to_dict())
    return out


# --------------------------------------------------------------------------------------------------------- #
# Report
# --------------------------------------------------------------------------------------------------------- #
def _fmt(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{v:.{digits}f}" if v == v else "n/a"


def _span(values: Any, digits: int = 2) -> str:
    return " / ".join(_fmt(v, digits) for v in values) if values else "-"


def _movement_rows(variant: str, movement: dict[str, Any]) -> list[str]:
    rows = []
    for name, row in (movement.get("parameters") or {}).items():
        extra = []
        if "median_period_tokens" in row:
            a, b = row["median_period_tokens"]
            extra.append(f"median period {a} -> {b} tokens")
        if "mean_gate" in row:
            a, b = row["mean_gate"]
            extra.append(f"mean gate {a} -> {b}")
        if "tau_tokens" in row:
            a, b = row["tau_tokens"]
            extra.append(f"tau {', '.join(map(str, a))} -> {', '.join(map(str, b))}")
        rows.append(f"| {variant} | `{name}` | {_fmt(row.get('mean_abs_change'), 4)} | "
                    f"{_fmt(row.get('change_in_init_spreads'), 3)} | {'; '.join(extra) or '-'} |")
    if not rows:
        rows.append(f"| {variant} | (no positional parameters) | - | - | - |")
    return rows


def write_markdown(path: Path, results: dict[str, dict[str, Any]], args: argparse.Namespace, command: str,
                   L: int) -> Path:
    """docs/extrapolation.md: one table per measurement, the command and the budget."""
    tokens = args.steps * args.batch_size * L
    first = next(iter(results.values()))
    nll_keys = list(first["nll"]["buckets"])
    lines = [
        "# A model that listens: extrapolation far beyond the training length",
        "",
        "Generated by `benchmarks/extrapolation.py`; rerun with:",
        "",
        f"    {command}",
        "",
        f"**Budget**: every variant trains on the POP909 train split with the same budget: {args.steps} steps x "
        f"{args.batch_size} crops x L={L} tokens = **{tokens:,} training tokens**.",
        "",
        "## Training",
        "",
        "| variant | overrides | params | steps | train time |",
        "|---|---|---:|---:|---:|",
    ]
    for variant, r in results.items():
        secs = r["train"].get("seconds")
        train_time = f"{secs / 60:.1f} min" if isinstance(secs, (int, float)) else "-"
        lines.append(f"| {variant} | `{' '.join(r['train'].get('overrides') or variant_overrides(variant))}` | "
                     f"{r['n_params'] / 1e6:.2f}M | {r['step']} | {train_time} |")
    top = args.length_factor * L
    lines += [
        "", "## NLL by position on single test songs", "",
        f"NLL (nats/token) on the test split, each song's first {top} tokens scored in one pass (evaluate.py's "
        f"code), by target position from the song start. Ratio: the last bucket / [L/2,L) (>1: worse beyond L). "
        "The unigram row is the train-split token-frequency baseline on the same targets.", "",
        "| variant | " + " | ".join(f"NLL {k}" for k in nll_keys) + f" | ratio {nll_keys[-1]}/{nll_keys[1]} |",
        "|---|" + "---:|" * len(nll_keys) + "---:|",
    ]
    for variant, r in results.items():
        b = r["nll"]["buckets"]
        lines.append(f"| {variant} | " + " | ".join(_fmt(b.get(k)) for k in nll_keys)
                     + f" | {_fmt(r['nll']['ratio_last_over_ref'])} |")
    uni = first["nll"].get("unigram_buckets") or {}
    if uni:
        lines.append("| unigram | " + " | ".join(_fmt(uni.get(k)) for k in nll_keys) + " | - |")
    lines += ["", "![NLL by position](extrapolation.png)", ""]
    if any("streams" in r for r in results.values()):
        s0 = next(r["streams"] for r in results.values() if "streams" in r)
        skeys = list(s0["buckets"])
        lines += [
            f"## NLL on streams of concatenated test songs ({args.stream_factor}L = {s0['length']} tokens)", "",
            "Consecutive test songs joined into one sequence (the BOS of each following song and the EOS of each "
            "preceding one dropped: one long piece, as free generation with EOS off writes), each stream scored "
            "in one parallel forward (float32, fixed SPE seed). Ratio: the last bucket / [L/2,L): how much worse "
            "the model predicts after listening to far more music than it was trained on.", "",
            "| variant | streams | songs per stream | " + " | ".join(f"NLL {k}" for k in skeys)
            + f" | ratio {s0['ratio_name']} |",
            "|---|---:|---:|" + "---:|" * len(skeys) + "---:|",
        ]
        for variant, r in results.items():
            s = r.get("streams")
            if not s:
                continue
            per = s["songs_per_stream"]
            lines.append(f"| {variant} | {s['streams']} | {_fmt(np.mean(per) if per else None, 1)} | "
                         + " | ".join(_fmt(s["buckets"].get(k)) for k in skeys)
                         + f" | {_fmt(s['ratio_last_over_ref'])} |")
        lines += ["", "![NLL by position in the streams](extrapolation_streams.png)", ""]
    if any("attention_share" in r for r in results.values()):
        lines += ["## Attention share on the most recent tokens", "",
                  f"Share of each query's attention weight on its last 64 tokens, queries in [2L,4L) = "
                  f"[{2 * L},{4 * L}) of test songs with >= {4 * L} tokens, mean over layers and heads; a uniform "
                  "running mean over the context gives the uniform share.", "",
                  "| variant | songs | share on last 64 | uniform share | share / uniform |", "|---|---:|---:|---:|---:|"]
        for variant, r in results.items():
            a = r.get("attention_share")
            if a:
                ratio = a["share_mean"] / a["uniform_share"] if a.get("share_mean") and a.get("uniform_share") else None
                lines.append(f"| {variant} | {a.get('songs')} | {_fmt(a.get('share_mean'))} | "
                             f"{_fmt(a.get('uniform_share'))} | {_fmt(ratio, 2)} |")
        lines.append("")
    lines += ["## Positional parameters: movement from init", "",
              "Mean |change| of every positional parameter, also in units of its initial spread (a learnable "
              "part that never moves is not a feature).", "",
              "| variant | parameter | mean abs change | in init spreads | before -> after |", "|---|---|---:|---:|---|"]
    for variant, r in results.items():
        lines += _movement_rows(variant, r.get("movement") or {})
    lines.append("")
    if any("generation" in r for r in results.values()):
        lines += [f"## Free generation: statistics per window of 16 four-beat bars ({args.gen_tokens} tokens, "
                  "EOS off)", "",
                  "min / median / max over the piece's windows. POP909's range: notes/bar 5-45, H4 <= 3.1, "
                  "groove >= 0.50, scale share >= 0.80, same (onset, pitch) <= 3 (the loop detector).", "",
                  "| variant | seed | tokens | bars | windows | notes/bar | H4 | groove | scale share | "
                  "loops (max same onset+pitch) | windows outside the range | guard actions |",
                  "|---|---|---:|---:|---:|---|---|---|---|---:|---:|---:|"]
        for variant, r in results.items():
            for label, g in (r.get("generation") or {}).items():
                s = g["summary"]
                loops = s["max_same_onset_pitch"][2] if s.get("max_same_onset_pitch") else None
                lines.append(f"| {variant} | {label} | {g['tokens']} | {g['bars_4_beats']} | {g['windows']} | "
                             f"{_span(s.get('notes_per_bar'), 1)} | {_span(s.get('h4'))} | {_span(s.get('groove'))} | "
                             f"{_span(s.get('scale_share'))} | {_fmt(loops, 0)} | {g['windows_outside']} | "
                             f"{sum(g['guards_acted'].values())} |")
        lines.append("")
    if any("continuation" in r for r in results.values()):
        from musicgen.evaluation.continuation import FIDELITY_KEYS

        lines += ["## Continuation fidelity", "",
                  f"{args.prompts} POP909 test songs with >= 24 bars: prompt = their first 8 bars, 2 continuations "
                  "of 16 bars each; distance of the continuation to the prompt (key, register, density, groove), "
                  "generated vs (in brackets) the song's own next 16 bars. Lower = closer to the prompt's world.", "",
                  "| variant | songs | samples | " + " | ".join(FIDELITY_KEYS) + " |",
                  "|---|---:|---:|" + "---|" * len(FIDELITY_KEYS)]
        for variant, r in results.items():
            c = r.get("continuation")
            if c:
                lines.append(f"| {variant} | {c['songs']} | {c['samples']} | " + " | ".join(
                    f"{_fmt(c['generated'].get(k))} ({_fmt(c['song_itself'].get(k))})" for k in FIDELITY_KEYS) + " |")
        lines.append("")
    if any("drift" in r for r in results.values()):
        lines += [f"## Drift: statistics per token window ({args.samples} samples of {top} tokens per model)", "",
                  "![drift](extrapolation_drift.png)", ""]
        for variant, r in results.items():
            d = r.get("drift")
            if not d:
                continue
            lines += [f"### {variant}", "", "| window | H4 | GS | note density | empty | skipped |",
                      "|---|---:|---:|---:|---:|---:|"]
            for m in d.get("window_means") or []:
                start = int(m.get("start_token", 0))
                lines.append(f"| [{start},{start + int(m.get('n_tokens', d['window']))}) | {_fmt(m.get('H4'))} | "
                             f"{_fmt(m.get('GS'))} | {_fmt(m.get('note_density'), 2)} | "
                             f"{_fmt(m.get('empty_bar_rate'))} | {_fmt(m.get('skipped_share'))} |")
            lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def _position_nll(report: dict[str, Any]) -> Any:
    from musicgen.evaluation.likelihood import PositionNLL

    count = np.asarray(report["per_position_count"], dtype=np.int64)
    mean = np.asarray([0.0 if v is None else v for v in report["per_position_nll_nats"]], dtype=np.float64)
    return PositionNLL(mean * count, count)


def plot_streams(results: dict[str, dict[str, Any]], L: int, path: Path) -> Path | None:
    curves = {v: r["streams"] for v, r in results.items() if r.get("streams") and r["streams"]["streams"]}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, s in curves.items():
        y = np.asarray([np.nan if v is None else v for v in s["curve"]], dtype=float)
        k = max(1, L // s["curve_bin"])  # moving average over about L tokens
        ys = np.convolve(np.nan_to_num(y), np.ones(k), "same") / np.maximum(
            np.convolve(np.isfinite(y).astype(float), np.ones(k), "same"), 1e-12)
        ax.plot((np.arange(len(y)) + 0.5) * s["curve_bin"], ys, label=name, linewidth=1.4)
    for m in (1, 4, 8, 16):
        if m * L < next(iter(curves.values()))["length"]:
            ax.axvline(m * L, color="black" if m == 1 else "grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel(f"token position in the stream (L={L}; lines at L, 4L, 8L, 16L)")
    ax.set_ylabel(f"NLL (nats/token, moving average over ~{L})")
    ax.set_title(f"NLL on streams of concatenated test songs (trained on L={L})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def _terminated(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through train_variant, which stops train.py cleanly


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    from musicgen.evaluation.plots import plot_nll_by_position
    from musicgen.evaluation.report import write_json

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        variant_overrides(v)  # unknown names fail before any work
    data_root = Path(args.data_root) if args.data_root else shared_data() / "pop909"
    if not data_root.is_dir():
        raise SystemExit(f"error: --data-root {data_root}: no such folder (set MUSICGEN_SHARED_DATA or --data-root)")
    runs = Path(args.runs_dir).resolve()
    command = "python -m benchmarks.extrapolation " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    tokens = args.steps * args.batch_size * args.seq_len
    print(f"budget: {args.steps} steps x {args.batch_size} crops x L={args.seq_len} = {tokens:,} training tokens "
          f"per variant; variants: {', '.join(variants)}", flush=True)

    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        train = train_variant(variant, args, runs, data_root.resolve())
        results[variant] = {"train": train, **evaluate_variant(variant, args, runs)}

    L = next(iter(results.values()))["train_len"]
    docs = Path(args.docs_dir)
    first = next(iter(results.values()))
    png = plot_nll_by_position({v: _position_nll(r["nll"]["report"]) for v, r in results.items()}, L,
                               docs / "extrapolation.png", smooth=64, title=f"test NLL by position (trained on L={L})",
                               baseline=first["nll"]["report"].get("unigram_nll_nats"))
    streams_png = plot_streams(results, L, docs / "extrapolation_streams.png")
    files = [png] + ([streams_png] if streams_png else [])
    if any("drift" in r for r in results.values()):
        from musicgen.evaluation.drift_report import DriftReport
        from musicgen.evaluation.plots import plot_drift

        try:
            drifts = {v: DriftReport(r["drift"]["tokens"], r["drift"]["window"], r["drift"]["samples"],
                                     r["drift"]["seed"]) for v, r in results.items() if "drift" in r}
            files.append(plot_drift(drifts, docs / "extrapolation_drift.png"))
        except TypeError as exc:  # a stored drift that no longer fits the report class: the tables still stand
            print(f"warning: drift plot skipped ({exc})")
    md = write_markdown(docs / "extrapolation.md", results, args, command, L)
    payload = {
        "command": command, "variants": {v: variant_overrides(v) for v in variants}, "steps": args.steps,
        "batch_size": args.batch_size, "seq_len": L, "train_tokens": args.steps * args.batch_size * L,
        "length_factor": args.length_factor, "stream_factor": args.stream_factor, "gen_tokens": args.gen_tokens,
        "gen_seeds": args.gen_seeds, "gen_batched": args.gen_batched, "prompts": args.prompts,
        "data_root": str(data_root), "model_overrides": args.model_overrides, "train_overrides": args.train_overrides,
        "results": {v: {"train": r["train"], "step": r["step"], "n_params": r["n_params"], "train_len": r["train_len"],
                        "nll_by_position": r["nll"]["buckets"],
                        "nll_unigram_by_position": r["nll"]["unigram_buckets"],
                        "extrapolation_ratio": r["nll"]["ratio_last_over_ref"],
                        "likelihood": r["nll"]["report"],
                        **{k: r[k] for k in ("streams", "attention_share", "movement", "generation", "continuation",
                                             "drift") if k in r}}
                    for v, r in results.items()},
    }
    out = write_json(args.results, payload)
    print(f"wrote {md}, {', '.join(map(str, files))}, {out}")
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
