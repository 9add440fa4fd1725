"""The evaluation job behind `python evaluate.py`, usable from Python (and by benchmarks/extrapolation.py).

    from musicgen.evaluation.report import EvaluateOptions, evaluate
    result = evaluate(EvaluateOptions(checkpoint="checkpoints/musicgen-small.pt", max_files=10))
    result.likelihood.buckets            # {"[0,512)": 1.23, "[512,1024)": ..., "[1024,2048)": ...} nats/token

Three independent parts, each writing its own files into `output_dir`:

1. **Likelihood** (always): NLL per token of the split's songs, scored from each song's start on crops of
   `length_factor * L` tokens (L = the checkpoint's training length), overall and by target position bucket
   [0,L), [L,2L), [2L,4L), ... plus [L/2,L) (the paper's reference bucket: the model's NLL inside the trained
   range *after* it has context, which is what the extrapolation buckets should be compared with, since
   [0,L) includes the cold start). A unigram baseline (train-split token frequencies) is scored on exactly
   the same targets, so a user sees at once whether the model learnt anything beyond token frequencies.
   Files: `nll.json`, `nll_by_position.png`.
2. **Music statistics** (with `generated=DIR`): `music_statistics` of every generated MIDI against the
   split's songs, both decoded by the same REMI tokenizer, so quantization and metre are identical on both
   sides and differences come from the music, not from the representation. Files: `music_statistics.json`.
3. **Long-generation drift** (with `drift_tokens=N`): pieces of N tokens sampled with `generate`
   (`allow_eos=false`), cut into windows of `drift_window` tokens and summarised by `windowed_statistics`.
   Files: `drift.json`, `drift.png` (and the generated pieces under `drift/`).

The checkpoint is loaded once (`musicgen.inference.load_model`); the drift part samples from the same model.
Each job has its module: `options` (EvaluateOptions), `eval_cache` (which token cache is read), `unigram`
(the baseline), `likelihood_report`, `music_report`, `drift_report` (with `windows`: decoding a window in
context), `tables` (console output) and `plots`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from ..config import UserError, check_writable_dir
from ..inference import load_model, resolve_checkpoint, resolve_device
from .drift_report import DriftReport, drift_report
from .eval_cache import open_eval_cache
from .likelihood_report import LikelihoodReport, likelihood_report
from .music_report import generated_statistics, music_statistics_report
from .options import EvaluateOptions
from .plots import plot_drift, plot_nll_by_position
from .tables import format_drift_table, format_nll_table, nll_by_position_line

Log = Callable[[str], None]

__all__ = ["EvaluateOptions", "EvaluationResult", "evaluate", "write_json"]


@dataclass
class EvaluationResult:
    """What `evaluate` computed, and the files it wrote."""

    likelihood: LikelihoodReport
    music: dict[str, Any] | None = None
    drift: DriftReport | None = None
    files: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None

    @property
    def last_line(self) -> str:
        return nll_by_position_line(self.likelihood.buckets)


def default_output_dir() -> Path:
    now = time.localtime()
    return Path("outputs") / "evaluate" / time.strftime("%Y-%m-%d", now) / time.strftime("%H-%M-%S", now)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


def write_json(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """JSON with NaN/inf as null (strict JSON readers reject NaN)."""
    path = Path(path)
    atomic_write_text(path, json.dumps(_json_safe(dict(payload)), indent=1))  # a full disk: old file or none
    return path


def evaluate(options: EvaluateOptions, log: Log | None = print) -> EvaluationResult:
    """Run the evaluation job (see the module docstring); tables go to `log`, files to `options.output_dir`."""
    log = log or (lambda _msg: None)
    ckpt_path = resolve_checkpoint(options.checkpoint)
    device = str(resolve_device(options.device))
    out = Path(options.output_dir) if options.output_dir else default_output_dir()
    check_writable_dir(out, "output_dir")  # before any work, not after the NLL step
    generated = None
    if options.generated:  # read the generated MIDI first: a bad folder fails now, bad files are skipped
        skipped: list[tuple[str, str]] = []
        rows, names = generated_statistics(options.generated, skipped)
        generated = (rows, names, skipped)
        for name, reason in skipped:
            log(f"skipped {name}: {reason}")
    loaded = load_model(ckpt_path, device)
    model, vocab, ckpt = loaded.model, loaded.vocab, loaded.checkpoint
    train_len = options.train_len or loaded.train_len
    if not train_len:
        raise UserError(f"checkpoint {ckpt_path}: no training length recorded (train_seq_len)")
    cache = open_eval_cache(ckpt.config or {}, vocab, options.data_root, options.data_cache_dir,
                            progress=options.progress, align=options.data_align_beats)
    files: dict[str, Path] = {}

    lik = likelihood_report(model, cache, train_len, split=options.split, length_factor=int(options.length_factor),
                            batch_size=int(options.batch_size), device=device, max_files=options.max_files,
                            seed=int(options.seed), progress=options.progress)
    payload = {"checkpoint": str(ckpt_path), "step": ckpt.step, "model": ckpt.model_config.get("name"),
               "data_root": cache.manifest["settings"]["root"], **lik.to_dict()}
    files["nll_json"] = write_json(out / "nll.json", payload)
    files["nll_png"] = plot_nll_by_position(
        {f"{ckpt.model_config.get('name', 'model')} (step {ckpt.step})": lik.model}, train_len,
        out / "nll_by_position.png", int(options.smooth), baseline=lik.unigram.mean if lik.unigram else None,
        title=f"{options.split} NLL by position ({lik.n_songs} song(s))")
    log(f"likelihood: {options.split} split, {lik.n_songs} song(s), crops of the first {train_len * lik.length_factor} "
        f"tokens (training length L={train_len}); NLL in nats/token (bits = nats / ln 2)")
    log(format_nll_table(lik))
    if lik.unigram is not None:
        better = "better" if lik.model.mean < lik.unigram.mean else "NOT better"
        log(f"model {lik.model.mean:.3f} nats/token vs unigram baseline {lik.unigram.mean:.3f}: the model is "
            f"{better} than token frequencies alone")

    result = EvaluationResult(lik, files=files, checkpoint=ckpt_path)
    if options.generated:
        table, music = music_statistics_report(options.generated, cache, options.split, loaded.tokenizer,
                                               options.max_files, precomputed=generated)
        files["music_json"] = write_json(out / "music_statistics.json", music)
        result.music = music
        log("")
        log(f"music statistics: {options.generated} vs the {options.split} split (mean ± std; skipped_share: "
            "tokens the grammar had to skip)"
            + (f"; {len(generated[2])} unreadable file(s) skipped" if generated and generated[2] else ""))
        log(table)

    if options.drift_tokens:
        started = time.perf_counter()
        drift = drift_report(loaded, int(options.drift_tokens), samples=int(options.drift_samples),
                             window=int(options.drift_window), seed=int(options.seed), device=device,
                             temperature=float(options.temperature), top_p=float(options.top_p),
                             output_dir=out / "drift", progress=options.progress)
        drift.tokens_per_second = int(options.drift_tokens) * int(options.drift_samples) / max(
            time.perf_counter() - started, 1e-9)
        files["drift_json"] = write_json(out / "drift.json", drift.to_dict())
        files["drift_png"] = plot_drift({ckpt.model_config.get("name", "model"): drift}, out / "drift.png")
        result.drift = drift
        log("")
        log(f"drift: {options.drift_samples} samples of {options.drift_tokens} tokens, statistics per "
            f"{options.drift_window}-token window (mean over samples)")
        log(format_drift_table(drift))

    log("")
    log(f"wrote {', '.join(str(p) for p in files.values())}")
    return result
