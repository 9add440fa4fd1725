"""Training throughput: tokens/s of forward + backward + AdamW step for the small default model.

    python benchmarks/train_throughput.py [--lengths 512 2048 8192] [--tokens 8192] [--repeats 3]
                                          [--models spe_sine_gated ape softmax] [--device cpu]

Each step processes `--tokens` tokens (batch = tokens / seq_len), so rows compare cost per token at each
length. Each (model, length) runs in its own subprocess so peak memory is its own: on CPU the process's
ru_maxrss high-water mark minus that of a process that only built the model and inputs; on CUDA
`torch.cuda.max_memory_allocated`. Times are medians of `--repeats` steps after one warm-up step.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import median, print_table, write_results  # noqa: E402

VOCAB = 637  # the default REMI vocabulary


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(model_name: str, length: int, tokens: int, repeats: int, device: str, overrides: list[str],
           precision: str = "fp32") -> dict:
    import torch
    import yaml

    from musicgen.model import build_model, load_preset

    cfg = load_preset(model_name)
    for item in overrides:
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

    step()
    times = [step() for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else _maxrss_mb() - base
    seconds = median(times)
    return {"model": model_name, "length": length, "batch": batch, "precision": precision, "seconds_per_step": seconds,
            "tokens_per_s": batch * length / seconds, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens per training step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["spe_sine_gated", "ape", "softmax"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="bf16 = autocast (CUDA)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/train_throughput.json)")
    parser.add_argument("--override", action="append", default=[], help="model override, e.g. attention.feature_map=elu")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker[0], int(args.worker[1]), args.tokens, args.repeats, args.device, args.override,
                        args.precision)
        print(json.dumps(result))
        return
    results = []
    for length in args.lengths:
        for name in args.models:
            cmd = [sys.executable, __file__, "--worker", name, str(length), "--tokens", str(args.tokens),
                   "--repeats", str(args.repeats), "--device", args.device, "--precision", args.precision]
            for item in args.override:
                cmd += ["--override", item]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{name} L={length}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
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
    print(f"training step (forward + backward + AdamW), {args.tokens} tokens per step, device {args.device}:")
    table = print_table(["model", "seq_len", "batch", "s/step", "tokens/s", "peak MB"], rows)
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    write_results("train_throughput", {"device": args.device, "precision": args.precision, "tokens_per_step": args.tokens,
                                       "overrides": args.override, "results": results, "ratios": ratios,
                                       "table": table}, args.out)


if __name__ == "__main__":
    main()
