"""Generation speed and memory: the SPE linear-attention model against the same-size softmax model (KV cache).

    python -m benchmarks.generate                       # shipped checkpoint (or a random small model), ~1-2 min on CPU
    python -m benchmarks.generate --positions 1000 4000 --batch 1 --window 100    # shrink it
    python -m benchmarks.generate --reach step          # really step to every position (slow: minutes)

For each model, batch size and position N it times `--window` generation steps starting at position N
(after `--warmup` untimed ones) and reports tokens/s = batch * steps / seconds, for
- `model`: `model.step` alone (the network), and
- `full`: the whole generation step users get (model + grammar masks + sampling + stop bookkeeping,
  `GenerationSession.step`).
How position N is reached (`--reach`):
- `jump` (default): the recurrent state is put at position N directly. For linear attention the state has
  a fixed size and its values do not change the cost, so this is exact for timing; for softmax the KV cache
  is filled with N random keys/values, which is what its per-step cost depends on (attention over N keys).
- `step`: the model is really stepped N times first (the honest way, and much slower for softmax).
`--device cuda` runs the models on a GPU (peak GPU memory reported too); `--graphs` sets `model.step_graphs`
(the lean step replayed from a CUDA graph, CUDA only).
Every (model, batch) pair runs in its own process so its peak RSS (`ru_maxrss`) is its own. Results go to
a table on stdout and to benchmarks/results/generate.json.

The SPE model is the `--checkpoint` (default checkpoints/musicgen-small.pt; when it does not exist yet, a
random model of conf/model/spe_sine_gated.yaml with the default tokenizer's vocabulary); the baseline is a
random model of conf/model/softmax.yaml with the same vocabulary. Weights do not change the speed.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _load_models(spec: dict[str, Any]):
    """(model, tokenizer, description) for one benchmark row, built inside the worker process."""
    import torch
    from omegaconf import OmegaConf

    from musicgen.model import build_model, load_preset
    from musicgen.tokenizer import REMITokenizer
    from musicgen.inference import load_model

    device = spec.get("device", "cpu")
    if spec.get("checkpoint"):
        loaded = load_model(spec["checkpoint"], device)
        return loaded.model, loaded.tokenizer
    tokenizer = REMITokenizer(dict(OmegaConf.to_container(OmegaConf.load(REPO / "conf/tokenizer/remi.yaml"))))
    torch.manual_seed(0)
    cfg = load_preset(spec["config"])  # a conf/model preset file, composed with _base.yaml
    return build_model(cfg, len(tokenizer.vocab)).to(device).eval(), tokenizer


def _to_position(state: Any, position: int) -> None:
    """Put a fresh recurrent state at `position` (see --reach jump in the module docstring)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    for cache in state.caches:
        if "len" in cache:  # softmax KV cache: fill N keys/values, keep room for the timed steps
            need = position + 1
            for key in ("k", "v"):
                buf = cache[key]
                if buf.shape[2] < need:
                    grown = torch.zeros(*buf.shape[:2], need + 1024, buf.shape[3], dtype=buf.dtype, device=buf.device)
                    cache[key] = buf = grown
                buf[:, :, :position] = torch.randn(buf[:, :, :position].shape, generator=gen).to(buf.device)
            cache["len"] = position
    memory = getattr(state, "recall", None)
    if memory is not None and position:  # a recall head's ring: as full as it would be at `position`
        stored = min(position, memory.keys.shape[1])
        memory.keys[:, :stored] = torch.randn(memory.keys[:, :stored].shape, generator=gen).to(memory.keys.device)
        memory.follow[:, :stored] = 4  # any token but PAD (0 = empty slot); the values do not change the cost
        memory.newest, memory.stored = stored - 1, stored
    state.position = position


def _worker(spec: dict[str, Any], queue: "mp.Queue[Any]") -> None:
    try:
        queue.put(_measure(spec))
    except BaseException as exc:  # noqa: BLE001 - report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def _measure(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from musicgen.generation import GenerationSession, SamplingConfig, StopConfig, state_nbytes
    from musicgen.generation.guards import GuardConfig
    from musicgen.generation.prompt import unconditional_prompt

    torch.set_num_threads(spec["threads"])
    model, tokenizer = _load_models(spec)
    device = torch.device(spec.get("device", "cpu"))
    model.step_graphs = bool(spec.get("graphs"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    batch, window, warmup = spec["batch"], spec["window"], spec["warmup"]
    rows = []
    for position in spec["positions"]:
        row: dict[str, Any] = {"model": spec["name"], "batch": batch, "position": position}
        for mode in ("model", "full"):
            session = GenerationSession(model, tokenizer, SamplingConfig(), StopConfig(
                tokens=position + window + warmup + 10, allow_eos=False), seed=0, device=device,
                guards=GuardConfig(enabled=spec.get("guards", True)))
            logits, tracks, _ = session.feed_prompt(unconditional_prompt(tokenizer), batch)
            tokens = torch.full((batch,), tokenizer.vocab.bar_id, dtype=torch.long, device=device)
            with torch.inference_mode():
                if spec["reach"] == "step":
                    for _ in range(position - session.state.position):
                        logits, session.state = model.step(tokens, session.state)
                else:
                    _to_position(session.state, position)
                for i in range(warmup + window):
                    if i == warmup:
                        sync()
                        began = time.perf_counter()
                    if mode == "model":
                        logits, session.state = model.step(tokens, session.state)
                    else:
                        logits = session.step(logits, tracks)
            sync()
            seconds = time.perf_counter() - began
            row[f"{mode}_tok_s"] = round(batch * window / seconds, 1)
            row[f"{mode}_ms_step"] = round(1000 * seconds / window, 3)
            row["state_mb"] = round(state_nbytes(session.state) / 2**20, 2)
        rows.append(row)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for row in rows:
        row["peak_rss_mb"] = round(peak, 1)
        if device.type == "cuda":
            row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row["graphs"] = model.step_graphs
    return {"rows": rows, "parameters": sum(p.numel() for p in model.parameters()), "config": model.config}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(spec, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise SystemExit(f"error: {spec['name']} batch {spec['batch']}: {result['error']}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=str(REPO / "checkpoints/musicgen-small.pt"),
                        help="SPE model checkpoint (default: the shipped one; a random small model if missing)")
    parser.add_argument("--config", default=str(REPO / "conf/model/spe_sine_gated.yaml"),
                        help="model config used when the checkpoint does not exist")
    parser.add_argument("--softmax-config", default=str(REPO / "conf/model/softmax.yaml"))
    parser.add_argument("--no-softmax", action="store_true", help="skip the softmax baseline")
    parser.add_argument("--compare", default=None,
                        help="a second checkpoint timed in the same run (e.g. the previously shipped model)")
    parser.add_argument("--guards-off-row", action="store_true",
                        help="also time the first model with the decoding guards off (their cost, side by side)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--positions", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--window", type=int, default=200, help="timed steps per position")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before each window")
    parser.add_argument("--reach", choices=("jump", "step"), default="jump")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads in each worker")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--graphs", action="store_true", help="model.step_graphs: CUDA-graph replay of the lean step")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/generate.json"))
    args = parser.parse_args(argv)

    have_ckpt = Path(args.checkpoint).is_file()
    models = [{"name": "spe (" + (Path(args.checkpoint).name if have_ckpt else "random " + Path(args.config).stem)
               + ")", "checkpoint": args.checkpoint if have_ckpt else None, "config": args.config}]
    if not have_ckpt:
        print(f"note: {args.checkpoint} not found: timing a random model of {args.config} instead", file=sys.stderr)
    if args.guards_off_row:
        models.append(dict(models[0], name=models[0]["name"] + " guards off", guards=False))
    if args.compare:
        models.append({"name": f"compare ({Path(args.compare).name})", "checkpoint": args.compare, "config": None})
    if not args.no_softmax:
        models.append({"name": f"softmax (random {Path(args.softmax_config).stem})", "checkpoint": None,
                       "config": args.softmax_config})
    rows, info = [], {}
    began = time.time()
    for model in models:
        for batch in args.batch:
            spec = dict(model, batch=batch, positions=args.positions, window=args.window, warmup=args.warmup,
                        reach=args.reach, threads=args.threads, device=args.device, graphs=args.graphs)
            print(f"timing {model['name']} batch {batch} ...", file=sys.stderr, flush=True)
            result = run(spec)
            rows += result["rows"]
            info[model["name"]] = {"parameters": result["parameters"], "config": result["config"]}

    header = ("model", "batch", "position", "model tok/s", "full tok/s", "ms/step", "state MB", "peak RSS MB")
    keys = ("model", "batch", "position", "model_tok_s", "full_tok_s", "full_ms_step", "state_mb", "peak_rss_mb")
    widths = [max(len(h), *(len(str(r[k])) for r in rows)) for h, k in zip(header, keys)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(str(r[k]).ljust(w) for k, w in zip(keys, widths)))

    summary: dict[str, Any] = {}
    spe = [r for r in rows if r["model"] == models[0]["name"]]
    if spe:
        b1 = [r["full_tok_s"] for r in spe if r["batch"] == min(args.batch)]
        summary["spe_batch1_full_tok_s_min"] = min(b1)
        summary["spe_flat_in_position_max_over_min"] = round(max(b1) / min(b1), 3)
    def row_of(name: str, batch: int, position: int) -> dict[str, Any]:
        return next(r for r in rows if r["model"] == name and r["batch"] == batch and r["position"] == position)

    far = max(args.positions)
    for other in models[1:]:
        for batch in args.batch:
            s = row_of(models[0]["name"], batch, far)["full_tok_s"]
            f = row_of(other["name"], batch, far)["full_tok_s"]
            if other["name"].startswith("softmax"):
                summary[f"speedup_vs_softmax_batch{batch}_at_{far}"] = round(s / f, 2)
            else:  # the same loop, another checkpoint or without guards: median ratio over positions
                ratios = sorted(row_of(models[0]["name"], batch, p)["full_tok_s"] / row_of(other["name"], batch, p)["full_tok_s"]
                                for p in args.positions)
                summary[f"full_tok_s_ratio_vs_{other['name']}_batch{batch}"] = round(ratios[len(ratios) // 2], 3)
    for key, value in summary.items():
        print(f"{key}: {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    out.write_text(json.dumps({
        "benchmark": "generate", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
                    "device": args.device, "threads_per_worker": args.threads},
        "settings": {k: v for k, v in vars(args).items() if k != "out"}, "checkpoint_found": have_ckpt,
        "models": info, "rows": rows, "summary": summary, "wall_seconds": round(time.time() - began, 1),
    }, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
