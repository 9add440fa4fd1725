"""`python -m musicgen.finetune my_midis/ --out runs/mystyle [--minutes 10] [key=value ...]`.

Fine-tunes a checkpoint (the shipped model by default) on a folder of MIDI files with the ordinary trainer and
the preset conf/experiment/finetune.yaml, and writes `<out>/best.pt` (best validation NLL on the folder's own
held-out files), `<out>/last.pt`, `<out>/finetune.json` and a few sample pieces with a copy check. What depends on
the folder is set here: the number of steps (from its size, within the time budget, measured on this machine
before it starts) and its token cache (`<out>/cache`). Anything else is a Hydra override (`train.lr=1e-4`).
The checkpoint stores the folder's corpus statistics, so generating with it decodes by the folder's rules.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("WANDB_SILENT", "true")

#: passes over the training tokens the step count aims at (docs/finetune.md: chosen by benchmarks/finetune.py)
TARGET_EPOCHS = 20.0
MIN_STEPS = 30
#: validation, the final saves and the sample pieces, on top of the training steps (measured, 2-core CPU)
OVERHEAD_S = 30.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m musicgen.finetune",
        description="Fine-tune a musicgen model on a folder of your own MIDI files (docs/finetune.md).")
    parser.add_argument("folder", help="folder of .mid/.midi/.kar files (searched recursively; bad files are skipped)")
    parser.add_argument("--out", required=True, help="output folder: best.pt, last.pt, finetune.json, samples/")
    parser.add_argument("--from", dest="init_from", default=None,
                        help="checkpoint to start from (default: the shipped checkpoints/musicgen-small.pt)")
    parser.add_argument("--minutes", type=float, default=10.0,
                        help="time budget of the training steps on this machine (default 10): the steps are chosen "
                             "to fit it, and training stops at 1.1 times it whatever happens")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default: from the folder's size and --minutes)")
    parser.add_argument("--samples", type=int, default=4,
                        help="sample pieces of 16 bars written with best.pt and checked for copying (0 = none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.lr=1e-4 train.batch_size=4")
    args = parser.parse_intermixed_args(argv)
    for option in args.overrides:
        if "=" not in option:
            parser.error(f"{option}: not a key=value override")
    return args


def compose_config(folder: Path, out: Path, init_from: Path, seed: int, device: str, overrides: list[str]):
    """conf/config.yaml + the finetune preset + this folder, with the model and tokenizer of `init_from`."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ..config import CONF_DIR, UserError
    from ..inference import load_checkpoint

    ckpt = load_checkpoint(init_from)
    base = ["+experiment=finetune", f"data.root={folder}", f"data.cache_dir={out / 'cache'}",
            f"train.init_from={init_from}", f"train.ckpt_dir={out}", f"seed={seed}", f"device={device}"]
    try:
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=base + list(overrides))
    except Exception as exc:  # noqa: BLE001 - Hydra's composition errors: one line
        raise UserError(" ".join(str(exc).split("\n")[0].split())) from None
    OmegaConf.set_struct(cfg, False)
    for group in ("model", "tokenizer"):  # the starting model's own shape and vocabulary, whatever the defaults
        if isinstance(ckpt.config.get(group), dict):
            cfg[group] = OmegaConf.create(ckpt.config[group])
    OmegaConf.set_struct(cfg, True)
    return cfg


def train_tokens(cache: Any) -> int:
    return int(sum(s.length for s in cache.split("train")))


def choose_steps(tokens: int, batch_tokens: int, seconds_per_step: float, minutes: float,
                 maximum: int) -> tuple[int, str]:
    """Steps for a corpus of `tokens` training tokens: `TARGET_EPOCHS` passes, at least `MIN_STEPS`, at most
    `maximum` (the preset's train.max_steps) and what the time budget allows on this machine."""
    wanted = max(MIN_STEPS, math.ceil(TARGET_EPOCHS * tokens / batch_tokens))
    budget = max(1, int(minutes * 60 / max(seconds_per_step, 1e-6)))
    steps = min(wanted, maximum, budget)
    why = (f"{TARGET_EPOCHS:g} passes over {tokens:,} tokens" if steps == wanted else
           f"train.max_steps={maximum}" if steps == maximum else f"the {minutes:g}-minute budget")
    return steps, why


def time_one_step(cfg: Any, vocab_size: int, time_markers: tuple[int, int, int]) -> float:
    """Seconds of one training step (forward + backward + AdamW) of this config on this machine: the second of
    two steps on random tokens (the first warms up)."""
    import torch

    from ..model import build_model
    from ..training.optim import make_optimizer

    device = torch.device("cuda" if str(cfg.device) == "auto" and torch.cuda.is_available() else
                          ("cpu" if str(cfg.device) == "auto" else str(cfg.device)))
    model = build_model(cfg.model, vocab_size, time_markers=time_markers).to(device)
    model.train()
    optimizer = make_optimizer(model, 1e-5, 0.0, (0.9, 0.98), 1.0)
    batch = torch.randint(0, vocab_size, (int(cfg.train.batch_size), int(cfg.train.seq_len) + 1), device=device)
    elapsed = 0.0
    for _ in range(2):
        began = time.perf_counter()
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - began
    return elapsed * int(cfg.train.grad_accum)


def copy_check(checkpoint: Path, cache: Any, out: Path, samples: int, seed: int, device: str,
               progress: bool) -> list[dict[str, Any]]:
    """Write `samples` pieces of 16 bars with `checkpoint` to <out>/samples and report the longest run of bars
    each copies from a training file (a warning past `WARN_BARS`)."""
    from ..generation import GenerateOptions, generate_with
    from .copying import CorpusBars, longest_copied_run, piece_bars

    options = GenerateOptions(checkpoint=str(checkpoint), num_samples=samples, bars=16, seed=seed, device=device,
                              output_dir=str(out / "samples"), progress=progress)
    pieces = generate_with(options, log=None)
    corpus = CorpusBars.from_cache(cache)
    rows = []
    for piece in pieces:
        report = longest_copied_run(piece_bars(piece.ids, cache.vocab), corpus)
        rows.append({"piece": piece.name, "bars": piece.n_bars, **report.to_dict(), "warning": report.warning()})
    return rows


def main(argv: list[str] | None = None) -> int:
    """The command line; a user mistake is one `error: ...` line and exit code 1."""
    from ..config import report_user_errors

    @report_user_errors
    def run() -> int:
        return finetune(parse_args(sys.argv[1:] if argv is None else argv))

    return int(run() or 0)


def finetune(args: argparse.Namespace) -> int:
    from ..config import UserError
    from ..data import prepare_corpus
    from ..data.stats import read_corpus_statistics
    from ..inference import resolve_checkpoint
    from ..training.trainer import run_training

    folder, out = Path(args.folder), Path(args.out)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder (give a folder of MIDI files)")
    if (out / "best.pt").exists() or (out / "last.pt").exists():
        raise UserError(f"--out {out} already holds a fine-tuned model (best.pt/last.pt); pick another folder "
                        "or delete it")
    init_from = resolve_checkpoint(args.init_from)
    began = time.perf_counter()
    cfg = compose_config(folder.resolve(), out.resolve(), init_from, args.seed, args.device, args.overrides)
    progress = not args.quiet
    cache = prepare_corpus(cfg.data, cfg.tokenizer, progress=progress)
    train, valid = cache.split("train"), cache.split("valid")
    if not train:
        raise UserError(f"{folder}: no file could be used for training (see {Path(cfg.data.cache_dir)}/bad_files.log)")
    tokens = train_tokens(cache)
    per_step = time_one_step(cfg, len(cache.vocab), cache.vocab.time_markers())
    user_steps = any(o.split("=", 1)[0].lstrip("+") == "train.max_steps" for o in args.overrides)
    if args.steps is not None:
        steps, why = args.steps, "--steps"
    elif user_steps:
        steps, why = int(cfg.train.max_steps), "train.max_steps"
    else:
        steps, why = choose_steps(tokens, int(cfg.train.batch_size) * int(cfg.train.seq_len) * int(cfg.train.grad_accum),
                                  per_step, args.minutes, int(cfg.train.max_steps))
    from omegaconf import OmegaConf

    OmegaConf.update(cfg, "train.max_steps", int(steps))
    if cfg.train.get("time_limit_minutes") is None:  # a busy machine cannot blow the budget: stop at it
        OmegaConf.update(cfg, "train.time_limit_minutes", float(args.minutes) * 1.1)
    OmegaConf.update(cfg, "train.warmup_steps", min(int(cfg.train.warmup_steps), max(1, steps // 5)))
    OmegaConf.update(cfg, "train.val_every", min(int(cfg.train.val_every), max(1, steps // 4)))
    estimate = steps * per_step + OVERHEAD_S + (args.samples * 8 if args.samples else 0)
    print(f"fine-tuning {init_from.name} on {len(train)} files ({tokens:,} tokens; {len(valid)} held out for "
          f"validation): {steps} steps ({why}) of {int(cfg.train.batch_size)}x{int(cfg.train.seq_len)} tokens at "
          f"{per_step:.1f} s/step measured here: about {estimate / 60:.1f} minutes; early stop after "
          f"{int(cfg.train.early_stop_patience)} validations without progress -> {out / 'best.pt'}", flush=True)
    result = run_training(cfg, out, progress=progress)
    train_seconds = time.perf_counter() - began
    best = out / "best.pt"
    if not best.exists():  # no validation file (a folder of one file): the last weights are the result
        import shutil

        shutil.copyfile(out / "last.pt", best)
    summary: dict[str, Any] = {
        "folder": str(folder), "init_from": str(init_from), "train_files": len(train), "valid_files": len(valid),
        "train_tokens": tokens, "steps_planned": steps, "steps": result.step, "stop_reason": result.stop_reason,
        "seconds_per_step_probe": round(per_step, 3), "estimate_s": round(estimate, 1),
        "train_seconds": round(train_seconds, 1), "best_val_nll": result.best_val_nll,
        "lr": float(cfg.train.lr), "train_only": list(cfg.train.train_only) if cfg.train.train_only else None,
        "corpus_stats": read_corpus_statistics(cache)}
    if args.samples:
        rows = copy_check(best, cache, out, args.samples, args.seed, args.device, progress)
        summary["copy_check"] = rows
        for row in rows:
            print(f"  {row['piece']}: longest run copied from a training file {row['bars']} bars"
                  + (f" ({row['file']})" if row["bars"] else ""))
            if row["warning"]:
                print(f"warning: {row['piece']}: {row['warning']}", file=sys.stderr)
    (out / "finetune.json").write_text(json.dumps(summary, indent=1))
    nll = f"{result.best_val_nll:.4f}" if result.best_val_nll is not None else "n/a"
    print(f"done in {(time.perf_counter() - began) / 60:.1f} minutes: {result.step} steps ({result.stop_reason}), "
          f"best validation NLL {nll} nats/token -> {best}\n"
          f"generate with: python generate.py checkpoint={best}")
    return 0
