"""Generation benchmark: per-token time of a whole model's recurrent ``step`` at positions 1k/4k/16k.

Compares the small default model (conf/model/spe_sine_gated.yaml: linear attention, constant-
size state) with the same-size softmax model (conf/model/softmax.yaml: pre-allocated KV cache,
attention over all previous tokens). Batch size 1, no_grad, eval mode.

How position P is reached (documented shortcut, so the benchmark takes seconds, not hours):
  * linear models: ``init_state`` then ``state.position = P``. The recurrent state has the same
    size at every position and the per-step work does not depend on its values; SPE codes at
    P are computed from the sines (or the ConvSPE ring buffer) exactly as during generation.
  * softmax: ``init_state(max_len=P + steps)`` pre-allocates the cache, which is then filled
    with P random keys/values (``len = P``); the step attends over all P + 1 entries, exactly
    as it would after P real steps.
Then ``--warmup`` steps are run untimed and ``--steps`` steps are timed one by one; the table
reports the median per-token time. Results go to benchmarks/results/step.json.

Usage: python -m benchmarks.step [--positions 1024 4096 16384] [--steps 50] [--models ...]
                                [--batch 1 64] [--graphs off|on|both] [--device cuda]

``--batch``: sequences stepped together (tokens/s = batch / time per step: the aggregate rate).
``--graphs on``: ``model.step_graphs`` (the lean step replayed from a CUDA graph, CUDA only; captured during
the warm-up steps); ``both`` times eager and graphed side by side. Models may be ``NAME+key=value`` variants.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from musicgen.model import build_model, load_preset

ROOT = Path(__file__).resolve().parents[1]


def reach_position(model, state, position: int) -> None:
    """Put ``state`` at ``position`` without stepping (see the module docstring)."""
    state.position = position
    for cache in state.caches:
        if "k" in cache:  # softmax KV cache
            cache["k"][:, :, :position].normal_()
            cache["v"][:, :, :position].normal_()
            cache["len"] = position


@torch.inference_mode()
def time_steps(model, position: int, steps: int, warmup: int, vocab: int, batch: int = 1) -> list[float]:
    g = torch.Generator().manual_seed(0)
    device = model.embed.weight.device
    state = model.init_state(batch, device=device, generator=g, max_len=position + steps + warmup + 1)
    reach_position(model, state, position)
    tok = torch.randint(1, vocab, (batch,), generator=g).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        logits, state = model.step(tok, state)
        sync()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
        tok = logits.argmax(-1)
    return times


def _variant(spec: str) -> dict:
    """``NAME+key=value[+...]``: a conf/model preset with overrides (values parsed as YAML)."""
    import yaml

    name, *items = spec.split("+")
    cfg = load_preset(name)
    for item in items:
        key, value = item.split("=", 1)
        *parents, leaf = key.removeprefix("model.").split(".")
        node = cfg
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    return cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--positions", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--models", nargs="+", default=["spe_sine_gated", "softmax"],
                   help="names of conf/model/*.yaml files")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--vocab", type=int, default=400)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=[1])
    p.add_argument("--graphs", choices=("off", "on", "both"), default="off",
                   help="CUDA-graph replay of the lean step (model.step_graphs)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "step.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    models = {}
    for name in args.models:
        torch.manual_seed(0)
        models[name] = build_model(_variant(name), args.vocab).to(args.device).eval()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.graphs]

    results = []
    print(f"{'model':28s} {'batch':>5s} {'graph':>5s} {'position':>9s} {'ms/step (median)':>17s} {'p10':>8s} "
          f"{'p90':>8s} {'tokens/s':>10s} {'state MB':>9s}")
    for pos in args.positions:
        for batch in args.batch:
            for name, model in models.items():  # interleaved: side-by-side under the same machine load
                for graphs in modes:
                    model.step_graphs = graphs
                    times = sorted(time_steps(model, pos, args.steps, args.warmup, args.vocab, batch))
                    model.step_graphs = False
                    state = model.init_state(batch, device=args.device, max_len=pos + 1)
                    med = 1e3 * statistics.median(times)
                    p10, p90 = 1e3 * times[len(times) // 10], 1e3 * times[(9 * len(times)) // 10]
                    mb = state.nbytes() / 2**20
                    del state
                    results.append({"model": name, "batch": batch, "graphs": graphs, "position": pos,
                                    "ms_per_token": med, "p10_ms": p10, "p90_ms": p90,
                                    "tokens_per_s": 1e3 * batch / med, "state_mb": mb})
                    print(f"{name:28s} {batch:5d} {'on' if graphs else 'off':>5s} {pos:9d} {med:17.3f} {p10:8.3f} "
                          f"{p90:8.3f} {1e3 * batch / med:10.0f} {mb:9.1f}", flush=True)

    print("\nGrowth of the per-step time relative to the first position:")
    growth = {}
    for name in models:
        for batch in args.batch:
            for graphs in modes:
                key = name + ("" if (batch, graphs) == (1, False) else f" batch {batch}" + (" graphs" if graphs else ""))
                rows = [r for r in results if r["model"] == name and r["batch"] == batch and r["graphs"] == graphs]
                base = rows[0]["ms_per_token"]
                growth[key] = {r["position"]: r["ms_per_token"] / base for r in rows}
                print(f"{key:28s} " + "  ".join(f"{pos}: {g:.2f}x" for pos, g in growth[key].items()))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
            "batch": args.batch, "graphs": args.graphs, "torch": torch.__version__, "loadavg_at_end": os.getloadavg()}
    if args.device.startswith("cuda"):
        meta["gpu"] = torch.cuda.get_device_name()
    out.write_text(json.dumps({"meta": meta, "results": results, "growth": growth}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
