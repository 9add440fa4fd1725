"""Training throughput: tokens/s of forward + backward + AdamW step for the small default model.

    python -m benchmarks.train_throughput [--lengths 512 2048 8192] [--tokens 8192] [--repeats 3]
                                          [--models spe_sine_gated ape softmax] [--device cpu]
                                          [--backend torch|fla|auto] [--dtype fp32|bf16]
    # variants of one preset side by side: NAME+key=value[+key=value...]
    python -m benchmarks.train_throughput --device cuda --dtype bf16 --lengths 2048 8192 \
        --models softmax spe_sine_gated_decay spe_sine_gated_decay+attention.backend=fla \
        --ratio spe_sine_gated_decay+attention.backend=fla softmax

Each step processes `--tokens` tokens (batch = tokens / seq_len, at least 1), so rows compare cost per token at
each length. Each (model, length) runs in its own subprocess so peak memory is its own: on CPU the process's
ru_maxrss high-water mark minus that of a process that only built the model and inputs; on CUDA
`torch.cuda.max_memory_allocated`. Times are medians of `--repeats` steps after `--warmup` warm-up steps (the
first fla steps compile and autotune Triton kernels). A row that fails (e.g. out of memory) is recorded with
its error. `--backend` sets attention.backend for the linear-attention presets (softmax keeps SDPA, which picks
FlashAttention for bf16 on CUDA). `--ratio A B` records seconds(B) / seconds(A) per length: how many times
faster A is than B.
Targets (issue): at 8192 the SPE linear model >= 5x faster than softmax, and SPE <= 1.5x the APE model's cost.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import median, print_table, write_results

REPO = Path(__file__).resolve().parents[1]

VOCAB = 637  # the default REMI vocabulary


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(model_name: str, length: int, tokens: int, repeats: int, device: str, overrides: list[str],
           precision: str = "fp32", backend: str | None = None, warmup: int = 1) -> dict:
    import torch
    import yaml

    from musicgen.model import build_model, load_preset

    name, *variant = model_name.split("+")
    cfg = load_preset(name)
    if backend and cfg["attention"]["kind"] == "linear":
        cfg["attention"]["backend"] = backend
    for item in [*overrides, *variant]:
        key, value = item.split("=", 1)
        node = cfg
        *parents, leaf = key.removeprefix("model.").split(".")
        for p in parents:
            node = node[p]
        node[leaf] = yaml.safe_load(value)
    dev = torch.device(device)
    torch.manual_seed(0)
    model = build_model(cfg, VOCAB).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = max(1, tokens // length)
    x = torch.randint(1, VOCAB, (batch, length + 1), device=dev)
    base = _maxrss_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), x[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(max(1, warmup)):
        step()
    times = [step() for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _maxrss_mb() - base
    seconds = median(times)
    return {"model": model_name, "length": length, "batch": batch, "precision": precision, "seconds_per_step": seconds,
            "tokens_per_s": batch * length / seconds, "peak_mb": peak, "backend": cfg["attention"]["backend"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per training step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["spe_sine_gated", "ape", "softmax"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", "--dtype", dest="precision", default="fp32", choices=["fp32", "bf16"],
                        help="bf16 = autocast (CUDA)")
    parser.add_argument("--backend", default=None, choices=["torch", "fast_transformers", "fla", "auto"],
                        help="attention.backend of the linear-attention presets (default: the preset's)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")
    parser.add_argument("--ratio", nargs=2, action="append", default=[], metavar=("A", "B"),
                        help="record seconds(B) / seconds(A) per length (A's speed-up over B)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed per (model, length) worker")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_throughput.json)")
    parser.add_argument("--override", action="append", default=[], help="model override, e.g. attention.feature_map=elu")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker[0], int(args.worker[1]), args.tokens, args.repeats, args.device, args.override,
                        args.precision, args.backend, args.warmup)
        print(json.dumps(result))
        return
    results, failures = [], []
    for length in args.lengths:
        for name in args.models:
            cmd = [sys.executable, "-m", "benchmarks.train_throughput", "--worker", name, str(length), "--tokens", str(args.tokens),
                   "--repeats", str(args.repeats), "--device", args.device, "--precision", args.precision,
                   "--warmup", str(args.warmup)]
            if args.backend:
                cmd += ["--backend", args.backend]
            for item in args.override:
                cmd += ["--override", item]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
            except subprocess.TimeoutExpired:
                failures.append({"model": name, "length": length, "error": f"timeout after {args.timeout} s"})
                print(f"{name} L={length}: timed out", flush=True)
                continue
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
                error = "out of memory" if "OutOfMemoryError" in proc.stderr or "out of memory" in proc.stderr else last
                failures.append({"model": name, "length": length, "error": error[-300:]})
                print(f"{name} L={length}: failed: {error[-300:]}", flush=True)
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            write_results("train_throughput", {"device": args.device, "precision": args.precision, "complete": False,
                                               "results": results, "failures": failures}, args.out, quiet=True)
            r = results[-1]
            print(f"  {name:>16} L={length:<5} {r['tokens_per_s']:8.0f} tokens/s  {r['peak_mb']:7.0f} MB", flush=True)
    rows, ratios = [], {}
    for length in args.lengths:
        at = {r["model"]: r for r in results if r["length"] == length}
        for r in at.values():
            rows.append([r["model"], length, r["batch"], r["seconds_per_step"], r["tokens_per_s"], r["peak_mb"]])
        if "spe_sine_gated" in at:
            spe = at["spe_sine_gated"]["seconds_per_step"]
            if "softmax" in at:
                ratios[f"softmax_over_spe@{length}"] = at["softmax"]["seconds_per_step"] / spe
            if "ape" in at:
                ratios[f"spe_over_ape@{length}"] = spe / at["ape"]["seconds_per_step"]
        for a, b in args.ratio:
            if a in at and b in at:
                ratios[f"{b} / {a}@{length}"] = at[b]["seconds_per_step"] / at[a]["seconds_per_step"]
    print(f"training step (forward + backward + AdamW), {args.tokens} tokens per step, device {args.device}:")
    table = print_table(["model", "seq_len", "batch", "s/step", "tokens/s", "peak MB"], rows)
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    for f in failures:
        print(f"failed: {f['model']} L={f['length']}: {f['error']}")
    write_results("train_throughput", {"device": args.device, "precision": args.precision, "complete": True,
                                       "tokens_per_step": args.tokens,
                                       "backend": args.backend, "warmup": args.warmup, "repeats": args.repeats,
                                       "overrides": args.override, "results": results, "failures": failures,
                                       "ratios": ratios, "table": table, "machine": _machine(args.device)}, args.out)


def _machine(device: str) -> dict:
    """What ran the rows: torch version, and the GPU's name on CUDA (fla's version when importable)."""
    import torch

    info = {"torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import importlib.metadata as md

        info["fla-core"] = md.version("fla-core")
        info["triton"] = md.version("triton")
    except Exception:  # noqa: BLE001 - not installed (CPU)
        pass
    return info


if __name__ == "__main__":
    main()
