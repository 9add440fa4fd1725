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
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..config import PROJECT_ROOT, UserError, check_float, check_int, check_writable_dir, require_known_keys
from .likelihood import NATS_PER_BIT, PositionNLL, extrapolation_edges, position_nll

Log = Callable[[str], None]

__all__ = [
    "EvaluateOptions", "EvaluationResult", "LikelihoodReport", "DriftReport", "evaluate", "likelihood_report",
    "open_eval_cache", "unigram_log_probs", "unigram_position_nll", "nll_by_position_line", "format_nll_table",
    "plot_nll_by_position", "smoothed_curve", "reference_statistics", "generated_statistics",
    "music_statistics_report", "drift_report", "plot_drift", "WindowDecoder",
]

#: Statistics drawn in drift.png (one panel each): harmony, rhythm, density, silence, grammar.
DRIFT_PLOT_KEYS: tuple[str, ...] = ("H4", "GS", "note_density", "empty_bar_rate", "skipped_share")



def _save_figure(fig, path: str | Path, dpi: int) -> Path:
    """Lay out, write (creating the folder) and close a matplotlib figure; returns the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path

# --------------------------------------------------------------------------------------------------------- #
# Options
# --------------------------------------------------------------------------------------------------------- #
@dataclass
class EvaluateOptions:
    """Everything `evaluate` accepts; conf/evaluate.yaml documents each field (same names)."""

    checkpoint: str | None = "checkpoints/musicgen-small.pt"
    data_root: str | None = None
    data_cache_dir: str | None = None
    split: str = "test"
    max_files: int | None = None
    length_factor: int = 4
    batch_size: int = 4
    device: str = "auto"
    seed: int = 1234
    smooth: int = 64
    generated: str | None = None
    drift_tokens: int | None = None
    drift_samples: int = 4
    drift_window: int = 1000
    temperature: float = 1.0
    top_p: float = 1.0
    output_dir: str | None = None
    progress: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "EvaluateOptions":
        """From the Hydra config (conf/evaluate.yaml; `data.root`/`data.cache_dir` nest) or a flat dict."""
        values = {k: v for k, v in dict(values).items() if k != "hydra"}
        data = values.pop("data", None) or {}
        unknown_data = sorted(set(data) - {"root", "cache_dir"})
        if unknown_data:
            raise UserError(f"unknown data option(s): {', '.join(unknown_data)} (evaluate.py takes data.root and "
                            "data.cache_dir; every other data setting comes from the checkpoint)")
        if data.get("root") is not None:
            values["data_root"] = data["root"]
        if data.get("cache_dir") is not None:
            values["data_cache_dir"] = data["cache_dir"]
        require_known_keys(cls, values, "evaluate")
        return cls(**values)

    def __post_init__(self) -> None:
        if self.split not in ("train", "valid", "test"):
            raise UserError(f"split={self.split!r}: use train, valid or test")
        for name in ("length_factor", "batch_size", "drift_samples", "drift_window", "smooth"):
            setattr(self, name, check_int(name, getattr(self, name), minimum=1))
        self.max_files = check_int("max_files", self.max_files, minimum=1, allow_none=True)
        self.drift_tokens = check_int("drift_tokens", self.drift_tokens, minimum=1, allow_none=True)
        self.seed = check_int("seed", self.seed)
        self.temperature = check_float("temperature", self.temperature, minimum=0.0)
        self.top_p = check_float("top_p", self.top_p, minimum=0.0, maximum=1.0, exclusive_min=True)
        if self.generated is not None and not Path(str(self.generated)).is_dir():
            raise UserError(f"generated={self.generated}: no such folder")


# --------------------------------------------------------------------------------------------------------- #
# Data
# --------------------------------------------------------------------------------------------------------- #
def _existing_path(path: str | Path) -> Path:
    """A relative path as the training run saw it: the working directory first, then the project root."""
    p = Path(str(path)).expanduser()
    if p.is_absolute() or p.exists() or not (PROJECT_ROOT / p).exists():
        return p
    return PROJECT_ROOT / p


def eval_data_config(ckpt_config: Mapping[str, Any], root: str | None = None,
                     cache_dir: str | None = None) -> dict[str, Any]:
    """The checkpoint's data settings (metre rule, split rule, max_files ...) with `root`/`cache_dir` swapped in.

    Why the checkpoint's: the split and metre rules define which songs are "test" and how they were tokenized,
    so any other choice would not measure the model on the data it was trained for. `cache_dir` here is the
    user's folder when given, else the checkpoint's own; `open_eval_cache` only *reads* the latter (paths
    that are written never come from a loaded file).
    """
    data = dict(ckpt_config.get("data") or {})
    if not data:
        raise UserError("the checkpoint carries no data config; pass data.root=... and data.cache_dir=...")
    data.setdefault("cache_dir", f"cache/{data.get('name', 'data')}")
    own_root = _existing_path(data.get("root", ""))
    data["cache_dir"] = str(cache_dir) if cache_dir is not None else str(_existing_path(data["cache_dir"]))
    data["root"] = str(root) if root is not None else str(own_root)
    data["download"] = False  # evaluation never fetches data behind the user's back
    return data


def default_eval_cache_dir(data: Mapping[str, Any], vocab: Any) -> Path:
    """Where evaluate builds a cache when the checkpoint's own cannot be used as it is: `cache/eval-<name>-<tag>`
    in the working directory, the tag hashing the data root, split and metre rules and the vocabulary."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(data.get("name") or "data")).strip("._") or "data"
    what = json.dumps({"root": str(Path(str(data.get("root", ""))).resolve()), "split": str(data.get("split")),
                       "time_signature": str(data.get("time_signature")), "max_files": data.get("max_files"),
                       "vocab": vocab.fingerprint}, sort_keys=True)
    return Path("cache") / f"eval-{name[:40]}-{hashlib.sha1(what.encode()).hexdigest()[:10]}"


def open_eval_cache(ckpt_config: Mapping[str, Any], vocab: Any, root: str | None = None,
                    cache_dir: str | None = None, progress: bool = True) -> Any:
    """Token cache for evaluation, with the checkpoint's tokenizer (its vocabulary) and data settings.

    - `cache_dir` given (data.cache_dir=): prepared or reused there; a cache of another vocabulary in that
      folder is refused, not overwritten;
    - else the checkpoint's own cache (its data.cache_dir) is used *read-only* when it is exactly up to date
      for these files and this vocabulary; otherwise a cache is prepared in `default_eval_cache_dir`.
      The checkpoint's folder is never written: its stored config cannot steer evaluate's writes, and a
      checkpoint of another vocabulary cannot rebuild a training cache.
    """
    from ..data import prepare_corpus
    from ..data.prepare import current_cache

    data = eval_data_config(ckpt_config, root, cache_dir)
    tokenizer_cfg = vocab.config  # the checkpoint's vocabulary defines what the ids mean
    if cache_dir is None:
        own = data["cache_dir"]
        cache = current_cache(data, tokenizer_cfg)
        if cache is None:
            data["cache_dir"] = str(default_eval_cache_dir(data, vocab))
            if progress:
                print(f"the checkpoint's token cache {own} is missing or not up to date for {data['root']} with its "
                      f"vocabulary (it is never written by evaluate): using {data['cache_dir']}", flush=True)
            cache = prepare_corpus(data, tokenizer_cfg, progress=progress, replace_other_vocabulary=False)
    else:
        cache = prepare_corpus(data, tokenizer_cfg, progress=progress, replace_other_vocabulary=False)
    if list(cache.vocab.tokens) != list(vocab.tokens):
        raise UserError(f"{cache.dir}: the token cache's vocabulary differs from the checkpoint's")
    return cache


def _split_songs(cache: Any, split: str, max_files: int | None) -> list[Any]:
    songs = cache.split(split)
    if not songs:
        root = cache.manifest.get("settings", {}).get("root")
        raise UserError(f"{cache.dir}: the '{split}' split has no songs (data.root={root})")
    return songs[: int(max_files)] if max_files else songs


# --------------------------------------------------------------------------------------------------------- #
# Likelihood
# --------------------------------------------------------------------------------------------------------- #
def unigram_log_probs(cache: Any, split: str = "train", alpha: float = 1.0) -> np.ndarray:
    """log p(token) from the `split`'s token frequencies, add-`alpha` smoothed over every id but PAD.

    Smoothing keeps the baseline finite on ids the train split never used; PAD gets probability 0 (it is never
    a scored target). Raises UserError when the split is empty.
    """
    songs = cache.split(split)
    if not songs:
        raise UserError(f"{cache.dir}: the '{split}' split has no songs, so there is no unigram baseline")
    n = len(cache.vocab)
    counts = np.zeros(n, dtype=np.float64)
    for song in songs:
        counts += np.bincount(cache.song_tokens(song).astype(np.int64), minlength=n)[:n]
    pad = cache.vocab.pad_id
    counts[pad] = 0.0
    counts += alpha
    counts[pad] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(counts / counts.sum())


def unigram_position_nll(log_probs: np.ndarray, dataset: Any, pad_id: int = 0) -> PositionNLL:
    """The unigram model scored like `position_nll` scores a network: same items, targets, PAD mask."""
    length = dataset[0].numel() - 1 if len(dataset) else 0
    nll_sum = np.zeros(length, dtype=np.float64)
    count = np.zeros(length, dtype=np.int64)
    for i in range(len(dataset)):
        targets = dataset[i][1:].numpy()
        mask = targets != pad_id
        nll_sum += np.where(mask, -log_probs[targets], 0.0)
        count += mask
    return PositionNLL(nll_sum, count)


def reference_edges(train_len: int, length_factor: int) -> list[int]:
    """Bucket edges reported: [0, L/2, L, 2L, 4L, ...] (L/2 splits [0,L) for the paper's comparison)."""
    return [0, train_len // 2] + extrapolation_edges(train_len, length_factor)[1:]


def _bucket_counts(result: PositionNLL, edges: Sequence[int]) -> dict[str, int]:
    return {f"[{a},{b})": int(result.count[a:b].sum()) for a, b in zip(edges[:-1], edges[1:])}


@dataclass
class LikelihoodReport:
    """NLL of the model and of the unigram baseline on the same targets (nats/token unless said)."""

    train_len: int
    length_factor: int
    split: str
    n_songs: int
    model: PositionNLL
    unigram: PositionNLL | None

    @property
    def edges(self) -> list[int]:
        """[0, L, 2L, 4L, ...]: the buckets of the machine-readable line."""
        return extrapolation_edges(self.train_len, self.length_factor)

    @property
    def buckets(self) -> dict[str, float]:
        return self.model.buckets(self.edges)

    @property
    def reference_bucket(self) -> str:
        return f"[{self.train_len // 2},{self.train_len})"

    def all_buckets(self, which: str = "model") -> dict[str, float]:
        """[0,L), [L/2,L), [L,2L), [2L,4L), ... for the model or the unigram baseline."""
        result = self.model if which == "model" else self.unigram
        if result is None:
            return {}
        out = {f"[0,{self.train_len})": result.bucket(0, self.train_len),
               self.reference_bucket: result.bucket(self.train_len // 2, self.train_len)}
        out.update(result.buckets(self.edges))
        return out

    @property
    def extrapolation_ratio(self) -> float:
        """NLL of the last bucket / NLL in [L/2, L): > 1 means the model gets worse past its training length."""
        last = self.buckets[list(self.buckets)[-1]]
        ref = self.model.bucket(self.train_len // 2, self.train_len)
        return last / ref if ref and math.isfinite(ref) else float("nan")

    def to_dict(self) -> dict[str, Any]:
        model_b = self.all_buckets("model")
        uni_b = self.all_buckets("unigram")
        counts = _bucket_counts(self.model, [0, self.train_len // 2] + self.edges[1:])
        counts[f"[0,{self.train_len})"] = int(self.model.count[: self.train_len].sum())
        return {
            "units": "nats per token (bits = nats / ln 2); positions are target positions from the song start",
            "split": self.split, "n_songs": self.n_songs, "train_len": self.train_len,
            "length_factor": self.length_factor, "crop_len": self.train_len * self.length_factor,
            "n_targets": int(self.model.count.sum()),
            "nll_nats": self.model.mean, "nll_bits": self.model.mean / NATS_PER_BIT,
            "unigram_nll_nats": self.unigram.mean if self.unigram else None,
            "unigram_nll_bits": self.unigram.mean / NATS_PER_BIT if self.unigram else None,
            "by_position_nats": model_b,
            "by_position_bits": {k: v / NATS_PER_BIT for k, v in model_b.items()},
            "unigram_by_position_nats": uni_b,
            "targets_by_position": {k: counts.get(k, 0) for k in model_b},
            "extrapolation_ratio": self.extrapolation_ratio,
            "per_position_nll_nats": [None if c == 0 else float(s / c)
                                      for s, c in zip(self.model.nll_sum, self.model.count)],
            "per_position_count": self.model.count.tolist(),
        }


def likelihood_report(model: Any, cache: Any, train_len: int, *, split: str = "test", length_factor: int = 4,
                      batch_size: int = 4, device: str = "cpu", max_files: int | None = None, seed: int = 1234,
                      unigram: bool = True, progress: bool = False) -> LikelihoodReport:
    """Model and unigram NLL by position on the first `length_factor * train_len` tokens of each song.

    Crops start at each song's start (`SequentialCrops(first_only=True)`), so position p really is "p tokens
    into the piece": the curve past `train_len` is the model extrapolating beyond anything it was trained on.
    """
    from ..data import SequentialCrops

    songs = _split_songs(cache, split, max_files)
    dataset = SequentialCrops(cache, split, train_len * length_factor, first_only=True, max_songs=len(songs))
    pad = cache.vocab.pad_id
    result = position_nll(model, dataset, batch_size, device, pad_id=pad, seed=seed, progress=progress)
    uni = unigram_position_nll(unigram_log_probs(cache, "train"), dataset, pad) if unigram else None
    return LikelihoodReport(int(train_len), int(length_factor), split, len(songs), result, uni)


def nll_by_position_line(buckets: Mapping[str, float]) -> str:
    """The machine-readable last line of evaluate.py: `nll_by_position: [0,512): 1.234  [512,1024): 1.300`."""
    return "nll_by_position: " + "  ".join(f"{k}: {v:.3f}" for k, v in buckets.items())


def format_nll_table(report: LikelihoodReport) -> str:
    """Bucket | targets | model nats | model bits | unigram nats, with overall first."""
    counts = report.to_dict()["targets_by_position"]
    model_b, uni_b = report.all_buckets("model"), report.all_buckets("unigram")
    rows = [("positions", "targets", "nats/token", "bits/token", "unigram nats")]
    uni_all = f"{report.unigram.mean:.3f}" if report.unigram else "-"
    rows.append(("all", str(int(report.model.count.sum())), f"{report.model.mean:.3f}",
                 f"{report.model.mean / NATS_PER_BIT:.3f}", uni_all))
    for key, value in model_b.items():
        note = " (L/2..L)" if key == report.reference_bucket else ""
        uni = f"{uni_b[key]:.3f}" if key in uni_b else "-"
        rows.append((key + note, str(counts.get(key, 0)), f"{value:.3f}", f"{value / NATS_PER_BIT:.3f}", uni))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"{r[0]:<{widths[0]}}" + "".join(f"  {c:>{w}}" for c, w in zip(r[1:], widths[1:])) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def smoothed_curve(result: PositionNLL, window: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(positions, moving-average NLL) over `window` positions, weighted by the number of targets.

    Weighting by counts matters past the shortest songs' ends, where few targets remain; positions with no
    target in the window are NaN (a gap in the plot, not a fake value).
    """
    kernel = np.ones(max(1, int(window)))
    s = np.convolve(result.nll_sum, kernel, mode="same")
    c = np.convolve(result.count.astype(np.float64), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = np.where(c > 0, s / np.maximum(c, 1e-12), np.nan)
    return np.arange(len(curve)), curve


def plot_nll_by_position(curves: Mapping[str, PositionNLL], train_len: int, path: str | Path, smooth: int = 64,
                         title: str = "NLL by position", baseline: float | None = None) -> Path:
    """One line per curve (moving average over `smooth` positions), the training length L marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, result in curves.items():
        x, y = smoothed_curve(result, smooth)
        ax.plot(x, y, label=name, linewidth=1.4)
    ax.axvline(train_len, color="black", linestyle="--", linewidth=1)
    ax.text(train_len, 1.0, f" L={train_len} (training length)", transform=ax.get_xaxis_transform(),
            va="top", ha="left", fontsize=8)
    if baseline is not None and math.isfinite(baseline):
        ax.axhline(baseline, color="grey", linestyle=":", linewidth=1, label=f"unigram ({baseline:.2f})")
    ax.set_xlabel("token position from the song start")
    ax.set_ylabel(f"NLL (nats/token, moving average over {smooth})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_figure(fig, path, dpi=120)


# --------------------------------------------------------------------------------------------------------- #
# Music statistics: generated MIDI vs the split
# --------------------------------------------------------------------------------------------------------- #
def reference_statistics(cache: Any, split: str, tokenizer: Any, max_files: int | None = None,
                         ) -> list[dict[str, float]]:
    """`music_statistics` of the split's songs, decoded from the cache's ids (the model's own view of them)."""
    from .metrics import music_statistics, skipped_token_share

    rows = []
    for song in _split_songs(cache, split, max_files):
        midi, report = tokenizer.decode_with_report(cache.song_tokens(song))
        row = dict(music_statistics(midi))
        row["skipped_share"] = skipped_token_share(report.skipped, report.n_tokens)
        rows.append(row)
    return rows


def generated_midi_files(folder: str | Path) -> list[Path]:
    """The .mid/.midi files under `folder` (sorted); a UserError when there are none."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi") and p.is_file())
    if not files:
        raise UserError(f"generated={folder}: no .mid/.midi files found")
    return files


def generated_statistics(folder: str | Path, skipped: list[tuple[str, str]] | None = None,
                         ) -> tuple[list[dict[str, float]], list[str]]:
    """(`music_statistics` of every readable .mid/.midi under `folder`, their relative paths).

    A file that cannot be read is left out and reported: appended to `skipped` as (relative path, reason);
    only when no file at all can be read is it a UserError.
    `skipped_share` comes from the `.json` generate.py writes beside each MIDI (`skipped` / `tokens`). A MIDI
    file does not carry the ids it was decoded from, and re-encoding it yields grammatical ids by construction
    (skip share 0 whatever the model did), so without that .json the share is NaN (shown as n/a).
    """
    from miditoolkit import MidiFile

    from .metrics import music_statistics, skipped_token_share

    folder = Path(folder)
    files = generated_midi_files(folder)
    rows, names, failed = [], [], []
    for path in files:
        name = path.relative_to(folder).as_posix()
        try:
            midi = MidiFile(str(path))
            row = dict(music_statistics(midi))
        except Exception as exc:  # a damaged file is skipped and reported, not a crash of all the statistics
            failed.append((name, f"cannot be read as MIDI ({type(exc).__name__}: {' '.join(str(exc).split())[:160]})"))
            continue
        row["skipped_share"] = float("nan")
        meta = path.with_suffix(".json")
        if meta.is_file():
            try:
                info = json.loads(meta.read_text())
                row["skipped_share"] = skipped_token_share(int(info["skipped"]), int(info["tokens"]))
            except (ValueError, KeyError, TypeError):
                pass
        rows.append(row)
        names.append(name)
    if skipped is not None:
        skipped.extend(failed)
    if not rows:
        first = f" ({failed[0][0]}: {failed[0][1]})" if failed else ""
        raise UserError(f"generated={folder}: none of its {len(files)} MIDI file(s) can be read{first}")
    return rows, names


def music_statistics_report(generated: str | Path, cache: Any, split: str, tokenizer: Any,
                            max_files: int | None = None,
                            precomputed: tuple[list[dict[str, float]], list[str], list[tuple[str, str]]] | None = None,
                            ) -> tuple[str, dict[str, Any]]:
    """(side-by-side table, JSON payload) of generated pieces vs the split's songs.

    `precomputed` = (rows, names, skipped) from `generated_statistics`, when the caller read the files already.
    """
    from .metrics import aggregate, format_comparison_table

    if precomputed is None:
        skipped: list[tuple[str, str]] = []
        gen, names = generated_statistics(generated, skipped)
    else:
        gen, names, skipped = precomputed
    ref = reference_statistics(cache, split, tokenizer, max_files)
    table = format_comparison_table(gen, ref, labels=(f"generated (n={len(gen)})", f"{split} (n={len(ref)})"))
    payload = {
        "generated_dir": str(generated), "split": split,
        "skipped_share_note": "generated: from generate.py's .json beside each MIDI (NaN without it); "
                              f"{split}: tokens the grammar skipped when decoding the cached ids",
        "generated_mean_std": {k: list(v) for k, v in aggregate(gen).items()},
        "reference_mean_std": {k: list(v) for k, v in aggregate(ref).items()},
        "generated": [{"file": n, **r} for n, r in zip(names, gen)],
        "skipped_files": [{"file": n, "reason": r} for n, r in skipped],
        "reference": ref,
    }
    return table, payload


# --------------------------------------------------------------------------------------------------------- #
# Drift
# --------------------------------------------------------------------------------------------------------- #
class WindowDecoder:
    """`decode_fn` for `windowed_statistics` that knows where each window sits in the whole sequence.

    Why not decode each window's ids on their own: a window cut at token 1000 starts mid-bar, and the grammar
    would skip its leading Position/Note tokens (counted as "ungrammatical", which they are not) and read a
    3/4 piece as 4/4 (its only TimeSig token is in bar 1). Instead, the whole sequence is walked once with the
    grammar: a token counts as skipped only if it was ungrammatical *in context*; each window is decoded from
    its first Bar (the partial bar before it belongs to the previous window and is left out of this window's
    statistics), with the metre in force re-stated after that Bar. Windows must be asked for in order, as
    `windowed_statistics` does; each call checks that the ids match.
    """

    def __init__(self, tokenizer: Any, ids: Sequence[int]) -> None:
        from ..tokenizer import TokenType

        self._time_sig = TokenType.TIME_SIG
        grammar, vocab = tokenizer.grammar, tokenizer.vocab
        self.tokenizer = tokenizer
        self.ids = [int(t) for t in ids]
        self.skipped = np.zeros(len(self.ids), dtype=bool)
        self.metre: list[tuple[int, int]] = []
        state = grammar.initial_state()
        for i, token in enumerate(self.ids):
            if grammar.allows(state, token):
                state = grammar.advance(state, token)
            else:
                self.skipped[i] = True
            self.metre.append(tuple(state.metre))
        self.bar_id, self.bos_id = vocab.bar_id, vocab.bos_id
        self.vocab = vocab
        self.cursor = 0

    def __call__(self, chunk: Sequence[int]) -> tuple[Any, int]:
        start, stop = self.cursor, self.cursor + len(chunk)
        if [int(t) for t in chunk] != self.ids[start:stop]:
            raise ValueError("WindowDecoder: windows must be decoded in order over the sequence it was built for")
        self.cursor = stop
        n_skipped = int(self.skipped[start:stop].sum())
        window = self.ids[start:stop]
        bars = [i for i, t in enumerate(window) if t == self.bar_id]
        if start == 0 or not bars:
            body = window if start == 0 else []
        else:
            first = bars[0]
            body = window[first:]
            metre = self.metre[start + first]
            follows_ts = len(body) > 1 and self.vocab.type_of(body[1]) == self._time_sig
            if metre != (4, 4) and not follows_ts:
                body = [body[0], self.vocab.time_signature_id(*metre)] + body[1:]
        midi, _ = self.tokenizer.decode_with_report(body)
        return midi, n_skipped


@dataclass
class DriftReport:
    """Per-sample window statistics of long generations, and their per-window means over samples."""

    tokens: int
    window: int
    samples: list[list[dict[str, float]]]
    seed: int
    tokens_per_second: float | None = None

    def window_means(self) -> list[dict[str, float]]:
        """Mean of each statistic over samples, window by window (NaN-aware)."""
        from .metrics import aggregate

        n = max((len(s) for s in self.samples), default=0)
        out = []
        for w in range(n):
            rows = [s[w] for s in self.samples if len(s) > w]
            means = {k: v[0] for k, v in aggregate(rows).items()}
            out.append(means)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "window": self.window, "seed": self.seed, "n_samples": len(self.samples),
                "window_means": self.window_means(), "samples": self.samples}


def drift_report(checkpoint: str | Path, tokens: int, *, samples: int = 4, window: int = 1000, seed: int = 1234,
                 device: str = "auto", temperature: float = 1.0, top_p: float = 1.0,
                 output_dir: str | Path | None = None, progress: bool = False) -> DriftReport:
    """Generate `samples` pieces of exactly `tokens` tokens (no EOS) and compute window statistics on each."""
    from ..generation import generate
    from ..tokenizer import REMITokenizer
    from .drift import windowed_statistics

    pieces = generate(checkpoint, tokens=int(tokens), allow_eos=False, max_tokens=int(tokens),
                      num_samples=int(samples), seed=int(seed), device=device, temperature=temperature,
                      top_p=top_p, output_dir=str(output_dir) if output_dir else None, name="drift",
                      pianoroll=False, progress=progress, log=None)
    from ..generation import resolve_checkpoint
    from ..training.checkpoint import load_checkpoint

    tokenizer = REMITokenizer(load_checkpoint(resolve_checkpoint(checkpoint)).vocab.config)
    per_sample = []
    for piece in pieces:
        # Windows cover the `tokens` generated tokens (not the BOS prompt), so each window has `window` tokens;
        # the grammar allows a sequence to start at a Bar, which is how unconditional samples begin.
        # At the token limit generate() cuts back to the last point where the piece could close and appends EOS,
        # so a piece holds up to `tokens` tokens plus EOS; the EOS is not music and is left out.
        ids = piece.continuation_ids
        if ids and ids[-1] == tokenizer.vocab.eos_id:
            ids = ids[:-1]
        per_sample.append(windowed_statistics(ids, WindowDecoder(tokenizer, ids), window=int(window)))
    return DriftReport(int(tokens), int(window), per_sample, int(seed))


def format_drift_table(report: DriftReport, keys: Sequence[str] = ("H1", "H4", "GS", "CPI", "note_density",
                                                                  "empty_bar_rate", "skipped_share")) -> str:
    """One row per window: token range, then the mean over samples of each statistic."""
    means = report.window_means()
    header = ["window", "tokens"] + list(keys)
    rows = [header]
    for w, m in enumerate(means):
        start = int(m.get("start_token", w * report.window))
        span = f"[{start},{start + int(m.get('n_tokens', report.window))})"
        rows.append([str(w), span] + [f"{m.get(k, float('nan')):.3f}" for k in keys])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(wd) for c, wd in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot_drift(reports: Mapping[str, DriftReport], path: str | Path,
               keys: Sequence[str] = DRIFT_PLOT_KEYS) -> Path:
    """A panel per statistic, x = window start token, one line per report (mean over its samples)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, report in reports.items():
            means = report.window_means()
            x = [m.get("start_token", i * report.window) for i, m in enumerate(means)]
            ax.plot(x, [m.get(key, float("nan")) for m in means], marker="o", markersize=3, label=name)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("window start (token)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return _save_figure(fig, path, dpi=110)


# --------------------------------------------------------------------------------------------------------- #
# The job
# --------------------------------------------------------------------------------------------------------- #
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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_safe(dict(payload)), indent=1))
    return path


def evaluate(options: EvaluateOptions, log: Log | None = print) -> EvaluationResult:
    """Run the evaluation job (see the module docstring); tables go to `log`, files to `options.output_dir`."""
    from ..generation import resolve_checkpoint
    from ..generation.options import resolve_device
    from ..tokenizer import REMITokenizer
    from ..training.checkpoint import load_model

    log = log or (lambda _msg: None)
    ckpt_path = resolve_checkpoint(options.checkpoint)
    device = resolve_device(options.device)
    out = Path(options.output_dir) if options.output_dir else default_output_dir()
    check_writable_dir(out, "output_dir")  # before any work, not after the NLL step
    generated = None
    if options.generated:  # read the generated MIDI first: a bad folder fails now, bad files are skipped
        skipped: list[tuple[str, str]] = []
        rows, names = generated_statistics(options.generated, skipped)
        generated = (rows, names, skipped)
        for name, reason in skipped:
            log(f"skipped {name}: {reason}")
    model, vocab, ckpt = load_model(ckpt_path, device)
    train_len = ckpt.train_seq_len or int(((ckpt.config or {}).get("train") or {}).get("seq_len") or 0)
    if not train_len:
        raise UserError(f"checkpoint {ckpt_path}: no training length recorded (train_seq_len)")
    cache = open_eval_cache(ckpt.config or {}, vocab, options.data_root, options.data_cache_dir,
                            progress=options.progress)
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
        tokenizer = REMITokenizer(vocab.config)
        table, music = music_statistics_report(options.generated, cache, options.split, tokenizer,
                                               options.max_files, precomputed=generated)
        files["music_json"] = write_json(out / "music_statistics.json", music)
        result.music = music
        log("")
        log(f"music statistics: {options.generated} vs the {options.split} split (mean ± std; skipped_share: "
            "tokens the grammar had to skip)"
            + (f"; {len(generated[2])} unreadable file(s) skipped" if generated and generated[2] else ""))
        log(table)

    if options.drift_tokens:
        del model  # generation loads its own copy
        started = time.perf_counter()
        drift = drift_report(ckpt_path, int(options.drift_tokens), samples=int(options.drift_samples),
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
