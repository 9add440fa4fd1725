"""Attention-layer benchmark: time and peak memory of causal attention variants vs sequence length.

Rows (B=4, H=8, d=64 by default; the inputs are q, k, v of one layer):
  linear_elu            our chunked causal linear attention, elu+1 features
  linear_performer      same kernel with FAVOR+ features (m = --features)
  linear_performer_spe  + gated sinusoidal SPE (R = --realizations, K = 5): codes (factorised:
                        local bases + per-chunk rotated noise) + filtering + performer on the
                        R-dim filtered q/k, with the gradients of every SPE parameter: the cost
                        for a one-layer model.
  linear_performer_spe_shared  same, codes made outside the timed region without gradients (the
                        filter then skips the code-parameter gradients)
  fast_transformers     pytorch-fast-transformers causal_product (row says "not installed")
  softmax_sdpa          torch.nn.functional.scaled_dot_product_attention(is_causal=True)
Whole-model rows (only for --model-lengths; tokens (B, L), the small presets of conf/model/):
  model_spe_sine_gated / model_none / model_softmax   forward (+ cross-entropy backward) of the
                        default model, the same model without PE, and the softmax baseline.
                        This is where SPE's cost is amortised: codes are shared by all layers.

Each (row, L, mode) runs in its own subprocess so peak memory can be measured:
  * CPU: ru_maxrss (process high-water mark) of the measuring subprocess minus ru_maxrss of a
    subprocess that only imports torch and builds the same inputs, i.e. the peak extra resident
    memory of forward(+backward) (allocator caching included; resolution ~ a few MB).
  * CUDA: torch.cuda.max_memory_allocated() after reset, minus the inputs' memory.
Times are medians over --repeats runs after one warm-up. Results go to benchmarks/results/attention.json.

Usage: python -m benchmarks.attention [--lengths 512 1024 ...] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    "linear_elu",
    "linear_performer",
    "linear_performer_spe",
    "linear_performer_spe_shared",
    "fast_transformers",
    "softmax_sdpa",
]
MODEL_ROWS = ["model_spe_sine_gated", "model_none", "model_softmax"]


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(args: argparse.Namespace) -> dict:
    """Run one (row, L, mode) measurement; returns a dict (printed as JSON by the parent)."""
    import torch

    from musicgen.model.ops.linear_attention import causal_linear_attention, require_fast_transformers
    from musicgen.model.feature_maps import EluFeatureMap, PerformerFeatureMap
    from musicgen.model.spe import SineSPE, SPEFilter

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    b, h, d, length, r = args.batch, args.heads, args.head_dim, args.length, args.realizations
    backward = args.mode == "fwd_bwd"
    row = args.row

    if row.startswith("model_"):
        return _model_worker(args, torch, dev, backward)
    if row == "fast_transformers":
        try:
            require_fast_transformers()
        except ImportError:
            return {"status": "not installed (pip install .[fast])"}

    q = torch.randn(b, length, h, d, device=dev, requires_grad=backward)
    k = torch.randn(b, length, h, d, device=dev, requires_grad=backward)
    v = torch.randn(b, h, length, d, device=dev, requires_grad=backward)
    elu = EluFeatureMap(d)
    perf = PerformerFeatureMap(h, d, args.features, 1.0).to(dev)
    perf_r = PerformerFeatureMap(h, r, args.features, 1.0).to(dev)
    sine = SineSPE(h, d, r, 5).to(dev)
    filt = SPEFilter(h, d, r, gated=True).to(dev)
    z, eps = sine.draw(None, dev), filt.draw(None, dev)
    shared_codes = None
    if row == "linear_performer_spe_shared":
        with torch.no_grad():
            shared_codes = sine.codes(z, length)

    def run():
        qt, kt = q.transpose(1, 2), k.transpose(1, 2)
        if row == "softmax_sdpa":
            out = torch.nn.functional.scaled_dot_product_attention(qt, kt, v, is_causal=True)
        elif row == "linear_elu":
            out = causal_linear_attention(elu(qt, None, True), elu(kt, None, False), v, args.chunk_size)
        elif row in ("linear_performer", "fast_transformers"):
            backend = "torch" if row == "linear_performer" else "fast_transformers"
            fq, fk = perf(qt, perf.features, True), perf(kt, perf.features, False)
            out = causal_linear_attention(fq, fk, v, args.chunk_size, backend=backend)
        else:
            codes = shared_codes if shared_codes is not None else sine.codes(z, length)
            qh, kh = filt(q, k, codes, eps)
            out = causal_linear_attention(
                perf_r(qh, perf_r.features, True), perf_r(kh, perf_r.features, False), v, args.chunk_size
            )
        if backward:
            out.sum().backward()
        return out

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    grad_ctx = torch.enable_grad if backward else torch.no_grad
    with grad_ctx():
        run()  # warm-up
        sync()
        if dev.type == "cuda":
            base_cuda = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.repeats):
            for t in (q, k, v):
                t.grad = None
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    else:  # high-water mark of this process minus that of a process holding only torch + the inputs
        peak = max(0.0, _maxrss_mb() - args.input_rss_mb)
    return {"status": "ok", "ms": 1e3 * statistics.median(times), "peak_mb": peak, "times_ms": [1e3 * t for t in times]}


def _model_worker(args: argparse.Namespace, torch, dev, backward: bool) -> dict:
    from musicgen.model import build_model, load_preset

    name = args.row[len("model_"):]
    vocab = 400
    model = build_model(load_preset(name), vocab).to(dev).train(backward)
    x = torch.randint(1, vocab, (args.batch, args.length), device=dev)

    def run():
        if backward:
            logits = model(x)
            torch.nn.functional.cross_entropy(logits.flatten(0, 1), x.flatten()).backward()
            model.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    run()
    times = []
    for _ in range(args.repeats):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = max(0.0, _maxrss_mb() - args.input_rss_mb) if dev.type == "cpu" else float("nan")
    return {"status": "ok", "ms": 1e3 * statistics.median(times), "peak_mb": peak,
            "times_ms": [1e3 * t for t in times]}


def _input_baseline_mb(args: argparse.Namespace) -> float:
    """ru_maxrss of a subprocess that only imports torch and builds the inputs (no attention)."""
    code = (
        "import resource, torch; torch.set_num_threads(%d);"
        "import musicgen.model;"
        "x=[torch.randn(%d,%d,%d,%d) for _ in range(3)];"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024.0)"
    ) % (args.threads, args.batch, args.length, args.heads, args.head_dim)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    p.add_argument("--rows", nargs="+", default=ROWS, choices=ROWS)
    p.add_argument("--model-lengths", type=int, nargs="*", default=[512, 1024],
                   help="also time whole small models (spe_sine_gated / none / softmax) at these lengths")
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd_bwd"], choices=["fwd", "fwd_bwd"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--features", type=int, default=64, help="performer random features m")
    p.add_argument("--realizations", type=int, default=64, help="SPE R")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement subprocess")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "attention.json"))
    # internal: run a single measurement
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--length", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", help=argparse.SUPPRESS)
    p.add_argument("--input-rss-mb", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        print(json.dumps(worker(args)))
        return

    results = []
    for length in args.lengths:
        args.length = length
        base = _input_baseline_mb(args) if args.device == "cpu" else 0.0
        for mode in args.modes:
            rows = list(args.rows) + (MODEL_ROWS if length in args.model_lengths else [])
            for row in rows:  # rows interleaved per (L, mode): ratios measured side by side
                cmd = [sys.executable, "-m", "benchmarks.attention", "--worker", "--row", row, "--length", str(length), "--mode", mode,
                       "--input-rss-mb", str(base)]
                for key in ("repeats", "batch", "heads", "head_dim", "features", "realizations", "chunk_size",
                            "threads", "device"):
                    cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
                try:
                    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
                    res = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else {
                        "status": f"failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}"}
                except subprocess.TimeoutExpired:
                    res = {"status": f"timeout > {args.timeout}s"}
                res.update(row=row, length=length, mode=mode)
                results.append(res)
                ms = f"{res['ms']:10.1f}" if "ms" in res else f"{'-':>10}"
                mb = f"{res['peak_mb']:9.0f}" if "peak_mb" in res else f"{'-':>9}"
                print(f"L={length:6d} {mode:8s} {row:30s} {ms} ms {mb} MB  {res['status'] if res['status'] != 'ok' else ''}",
                      flush=True)

    def get(row, length, mode):
        for r in results:
            if r["row"] == row and r["length"] == length and r["mode"] == mode and "ms" in r:
                return r["ms"]
        return None

    ratios = []
    print("\nRatios (median times; >1 means the first is slower):")
    print(f"{'L':>6} {'mode':8s} {'softmax/linear_perf':>20} {'softmax/linear_elu':>19} {'spe/noPE':>9} "
          f"{'spe_shared/noPE':>16} {'model spe/noPE':>15} {'model softmax/spe':>18}")
    for length in args.lengths:
        for mode in args.modes:
            sm, lp, le = get("softmax_sdpa", length, mode), get("linear_performer", length, mode), get("linear_elu", length, mode)
            sp, ss = get("linear_performer_spe", length, mode), get("linear_performer_spe_shared", length, mode)
            ms_, mn, msm = (get(f"model_{n}", length, mode) for n in ("spe_sine_gated", "none", "softmax"))
            r = {
                "length": length, "mode": mode,
                "softmax_over_linear_performer": sm / lp if sm and lp else None,
                "softmax_over_linear_elu": sm / le if sm and le else None,
                "spe_over_nope": sp / lp if sp and lp else None,
                "spe_shared_over_nope": ss / lp if ss and lp else None,
                "model_spe_over_none": ms_ / mn if ms_ and mn else None,
                "model_softmax_over_spe": msm / ms_ if msm and ms_ else None,
            }
            ratios.append(r)
            fmt = lambda x: f"{x:.2f}" if x else "-"  # noqa: E731
            print(f"{length:6d} {mode:8s} {fmt(r['softmax_over_linear_performer']):>20} {fmt(r['softmax_over_linear_elu']):>19} "
                  f"{fmt(r['spe_over_nope']):>9} {fmt(r['spe_shared_over_nope']):>16} "
                  f"{fmt(r['model_spe_over_none']):>15} {fmt(r['model_softmax_over_spe']):>18}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("batch", "heads", "head_dim", "features", "realizations", "chunk_size",
                                           "threads", "device", "repeats", "lengths")}
    try:
        import torch

        meta["torch"] = torch.__version__
    except ImportError:  # pragma: no cover
        pass
    out.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
