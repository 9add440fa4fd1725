"""The paper's experiment: does a model trained on L-token crops still predict well at 2L and 4L tokens?

For each variant (conf/model/<variant>.yaml, all the same small size) this script

1. trains on the POP909 train split with the SAME budget (steps x batch x seq_len tokens) by running
   `python train.py model=<variant> train.seq_len=L train.max_steps=S ...` as a subprocess, checkpoints in
   `<runs>/<variant>/`. Resume-safe: a variant whose last.pt reached S steps is not retrained, one that stopped
   earlier continues from its last.pt (train.resume=true), so an interrupted run is simply started again;
2. evaluates test-split NLL by position on each song's first 4L tokens with exactly the code of evaluate.py
   (`musicgen.evaluation.report.likelihood_report`): buckets [0,L), [L/2,L), [L,2L), [2L,4L);
3. generates `--samples` pieces of 4L tokens per model (EOS disabled) and reports the music statistics per
   window of `--drift-window` tokens (default L, so the windows line up with the NLL buckets).

Outputs: docs/extrapolation.md (tables), docs/extrapolation.png (NLL vs position, one line per variant, L
marked), benchmarks/results/extrapolation.json (everything, incl. per-position curves and training times).
The variant set, budget and timings are recorded in all three, so the numbers can be traced to a command.

    python benchmarks/extrapolation.py                                 # the full experiment (hours on a CPU)
    python benchmarks/extrapolation.py --steps 500                     # a smaller budget
    python benchmarks/extrapolation.py --steps 3 --seq-len 64 --variants ape,spe_sine_gated --max-files 20 \
        --samples 1 --model-overrides "model.n_layers=1 model.d_model=32 model.n_heads=2 model.d_ff=64"

Sizing the budget: training time is about steps x (time per step), and the time per step grows with
batch x seq_len; `--steps` is the knob. Each variant's wall-clock training time is written to the results, so
a first run at a small `--steps` tells how large a budget fits the time you have.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from common import RESULTS, shared_data  # noqa: E402

VARIANTS = ("ape", "spe_sine_gated", "spe_conv_gated", "spe_sine", "softmax")
DEFAULT_RUNS = RESULTS / "extrapolation_runs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated conf/model presets")
    p.add_argument("--steps", type=int, default=2000, help="optimizer steps per variant (the budget knob)")
    p.add_argument("--batch-size", type=int, default=8, help="crops per step")
    p.add_argument("--seq-len", type=int, default=512, help="training length L")
    p.add_argument("--length-factor", type=int, default=4, help="evaluate up to this many times L")
    p.add_argument("--samples", type=int, default=8, help="generated pieces of length_factor*L tokens per model")
    p.add_argument("--drift-window", type=int, default=None, help="tokens per drift window (default: L)")
    p.add_argument("--data-root", default=None,
                   help="POP909 folder (default: $MUSICGEN_SHARED_DATA/pop909 or <repo>/../shared/data/pop909)")
    p.add_argument("--max-files", type=int, default=None, help="use only the first N POP909 files (quick tests)")
    p.add_argument("--eval-max-files", type=int, default=None, help="evaluate only the first N test songs")
    p.add_argument("--eval-batch-size", type=int, default=4, help="crops of length_factor*L per scoring pass")
    p.add_argument("--runs-dir", default=str(DEFAULT_RUNS), help="checkpoints, token cache and train logs")
    p.add_argument("--docs-dir", default=str(REPO / "docs"), help="where extrapolation.md/.png go")
    p.add_argument("--results", default=str(RESULTS / "extrapolation.json"), help="JSON results file")
    p.add_argument("--model-overrides", default="", help='extra Hydra overrides, e.g. "model.n_layers=1 ..."')
    p.add_argument("--train-overrides", default="", help='more Hydra overrides for train.py, e.g. "train.lr=1e-3"')
    p.add_argument("--device", default="auto", help="device for training, scoring and sampling")
    p.add_argument("--seed", type=int, default=1234, help="scoring/sampling seed (training uses the config seed)")
    p.add_argument("--skip-train", action="store_true", help="only evaluate existing checkpoints")
    return p.parse_args(argv)


def _checkpoint_step(path: Path) -> int:
    from musicgen.training.checkpoint import load_checkpoint

    try:
        return load_checkpoint(path).step
    except (OSError, ValueError):
        return -1


def train_variant(variant: str, args: argparse.Namespace, runs: Path, data_root: Path) -> dict[str, Any]:
    """Train one variant to args.steps (or find it done); returns {"steps", "seconds", "skipped"}."""
    ckpt_dir = runs / variant
    last = ckpt_dir / "last.pt"
    timing_path = ckpt_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.exists() else {"seconds": 0.0}
    step = _checkpoint_step(last) if last.exists() else -1
    if step >= args.steps or args.skip_train:
        if step < 0:
            raise SystemExit(f"error: {last}: no checkpoint to evaluate (run without --skip-train)")
        print(f"[{variant}] already trained ({step} steps), skipping training")
        return {"steps": step, "seconds": timing.get("seconds"), "skipped": True}
    steps = int(args.steps)
    cmd = [sys.executable, str(REPO / "train.py"), f"model={variant}", f"train.seq_len={args.seq_len}",
           f"train.max_steps={steps}", f"train.batch_size={args.batch_size}", f"train.ckpt_dir={ckpt_dir}",
           "train.resume=true", f"train.warmup_steps={max(1, min(500, steps // 10))}",
           f"train.val_every={max(1, min(500, steps // 4))}", f"train.ckpt_every={max(1, min(500, steps))}",
           f"train.val_length_factor={args.length_factor}", "logger=none", f"data.root={data_root}",
           f"data.cache_dir={runs / 'cache'}", f"device={args.device}", f"hydra.run.dir={ckpt_dir / 'hydra'}"]
    if args.max_files:
        cmd.append(f"data.max_files={args.max_files}")
    cmd += shlex.split(args.model_overrides) + shlex.split(args.train_overrides)
    print(f"[{variant}] training: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"error: training {variant} failed (exit code {proc.returncode}); see the output above")
    total = float(timing.get("seconds") or 0.0) + seconds  # a resumed run adds up its pieces
    timing_path.write_text(json.dumps({"seconds": total, "steps": steps, "batch_size": args.batch_size,
                                       "seq_len": args.seq_len}, indent=1))
    return {"steps": _checkpoint_step(last), "seconds": total, "skipped": False}


def evaluate_variant(variant: str, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    """Test NLL by position (evaluate.py's code) and window statistics of long generations for one variant."""
    from musicgen.evaluation.report import drift_report, likelihood_report, open_eval_cache
    from musicgen.generation.options import resolve_device
    from musicgen.training.checkpoint import load_model

    device = resolve_device(args.device)
    path = runs / variant / "last.pt"
    model, vocab, ckpt = load_model(path, device)
    L = int(ckpt.train_seq_len or args.seq_len)
    cache = open_eval_cache(ckpt.config, vocab, progress=False)
    started = time.perf_counter()
    lik = likelihood_report(model, cache, L, split="test", length_factor=args.length_factor,
                            batch_size=args.eval_batch_size, device=device, max_files=args.eval_max_files,
                            seed=args.seed)
    eval_seconds = time.perf_counter() - started
    n_params = sum(p.numel() for p in model.parameters())
    del model
    window = int(args.drift_window or L)
    started = time.perf_counter()
    drift = drift_report(path, args.length_factor * L, samples=args.samples, window=window, seed=args.seed,
                         device=device)
    gen_seconds = time.perf_counter() - started
    print(f"[{variant}] NLL {lik.model.mean:.3f} nats/token, "
          + "  ".join(f"{k}: {v:.3f}" for k, v in lik.all_buckets().items()), flush=True)
    return {"likelihood": lik, "drift": drift, "train_len": L, "n_params": n_params,
            "eval_seconds": eval_seconds, "generate_seconds": gen_seconds, "step": ckpt.step}


def _fmt(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return f"{v:.{digits}f}" if v == v else "n/a"


def write_markdown(path: Path, results: dict[str, dict[str, Any]], args: argparse.Namespace, command: str,
                   L: int) -> Path:
    """docs/extrapolation.md: the NLL table (with the extrapolation ratio) and per-window drift tables."""
    top = args.length_factor * L
    mid_keys = [f"[0,{L})", f"[{L // 2},{L})", f"[{L},{2 * L})", f"[{2 * L},{4 * L})"]
    lines = [
        "# Extrapolation beyond the training length",
        "",
        "Generated by `benchmarks/extrapolation.py`; rerun with:",
        "",
        f"    {command}",
        "",
        f"Every variant trains on the POP909 train split with the same budget: {args.steps} steps x "
        f"{args.batch_size} crops x L={L} tokens = {args.steps * args.batch_size * L:,} training tokens. "
        f"NLL (nats/token) is measured on the test split, scoring each song's first {top} tokens, by target "
        f"position from the song start. The ratio NLL[2L,4L) / NLL[L/2,L) compares extrapolation with the "
        "model's own accuracy late inside its trained range (>1: worse beyond L). The unigram row is the "
        "train-split token-frequency baseline on the same targets.",
        "",
        "| variant | params | steps | train time | " + " | ".join(f"NLL {k}" for k in mid_keys)
        + " | ratio [2L,4L)/[L/2,L) |",
        "|---|---:|---:|---:|" + "---:|" * len(mid_keys) + "---:|",
    ]
    uni = None
    for variant, r in results.items():
        b = r["likelihood"].all_buckets()
        ratio = (b.get(mid_keys[3], float("nan")) / b[mid_keys[1]]) if b.get(mid_keys[1]) else float("nan")
        secs = r["train"].get("seconds")
        train_time = f"{secs / 60:.1f} min" if isinstance(secs, (int, float)) else "-"
        lines.append(f"| {variant} | {r['n_params'] / 1e6:.2f}M | {r['step']} | {train_time} | "
                     + " | ".join(_fmt(b.get(k)) for k in mid_keys) + f" | {_fmt(ratio)} |")
        uni = uni or r["likelihood"].all_buckets("unigram")
    if uni:
        lines.append("| unigram | - | - | - | " + " | ".join(_fmt(uni.get(k)) for k in mid_keys) + " | - |")
    lines += ["", "![NLL by position](extrapolation.png)", "",
              f"## Long generation: statistics per window ({args.samples} samples of {top} tokens per model, "
              "mean over samples)", "",
              "H4: 4-bar pitch-class entropy (bits), GS: grooving similarity, empty: empty-bar rate, skipped: "
              "share of tokens the grammar had to skip (0 with constrained sampling).", ""]
    for variant, r in results.items():
        drift = r["drift"]
        lines += [f"### {variant}", "", "| window | H4 | GS | note density | empty | skipped |",
                  "|---|---:|---:|---:|---:|---:|"]
        for m in drift.window_means():
            start = int(m.get("start_token", 0))
            lines.append(f"| [{start},{start + int(m.get('n_tokens', drift.window))}) | {_fmt(m.get('H4'))} | "
                         f"{_fmt(m.get('GS'))} | {_fmt(m.get('note_density'), 2)} | "
                         f"{_fmt(m.get('empty_bar_rate'))} | {_fmt(m.get('skipped_share'))} |")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from musicgen.evaluation.report import plot_drift, plot_nll_by_position, write_json

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if not (REPO / "conf" / "model" / f"{v}.yaml").exists()]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {', '.join(unknown)} (see conf/model/)")
    data_root = Path(args.data_root) if args.data_root else shared_data() / "pop909"
    if not data_root.is_dir():
        raise SystemExit(f"error: --data-root {data_root}: no such folder (set MUSICGEN_SHARED_DATA or --data-root)")
    runs = Path(args.runs_dir).resolve()
    command = "python benchmarks/extrapolation.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        train = train_variant(variant, args, runs, data_root.resolve())
        results[variant] = {"train": train, **evaluate_variant(variant, args, runs)}

    L = next(iter(results.values()))["train_len"]
    docs = Path(args.docs_dir)
    png = plot_nll_by_position({v: r["likelihood"].model for v, r in results.items()}, L, docs / "extrapolation.png",
                               smooth=64, title=f"test NLL by position (trained on L={L})",
                               baseline=next(iter(results.values()))["likelihood"].unigram.mean)
    drift_png = plot_drift({v: r["drift"] for v, r in results.items()}, docs / "extrapolation_drift.png")
    md = write_markdown(docs / "extrapolation.md", results, args, command, L)
    payload = {
        "command": command, "variants": variants, "steps": args.steps, "batch_size": args.batch_size,
        "seq_len": L, "length_factor": args.length_factor, "samples": args.samples,
        "train_tokens": args.steps * args.batch_size * L, "data_root": str(data_root),
        "model_overrides": args.model_overrides, "train_overrides": args.train_overrides,
        "results": {v: {"train": r["train"], "step": r["step"], "n_params": r["n_params"],
                        "eval_seconds": r["eval_seconds"], "generate_seconds": r["generate_seconds"],
                        "nll_by_position": r["likelihood"].all_buckets(),
                        "extrapolation_ratio": r["likelihood"].extrapolation_ratio,
                        "likelihood": r["likelihood"].to_dict(), "drift": r["drift"].to_dict()}
                    for v, r in results.items()},
    }
    out = write_json(args.results, payload)
    print(f"wrote {md}, {png}, {drift_png}, {out}")
    print(md.read_text().split("![NLL")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
