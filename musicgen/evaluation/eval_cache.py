"""The token cache evaluate reads: the checkpoint's own corpus settings, its vocabulary, and never a write to a
folder a loaded checkpoint names (see `open_eval_cache`)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import PROJECT_ROOT, UserError


def _existing_path(path: str | Path) -> Path:
    """A relative path as the training run saw it: the working directory first, then the project root."""
    p = Path(str(path)).expanduser()
    if p.is_absolute() or p.exists() or not (PROJECT_ROOT / p).exists():
        return p
    return PROJECT_ROOT / p


def eval_data_config(ckpt_config: Mapping[str, Any], root: str | None = None,
                     cache_dir: str | None = None, align: bool | None = None) -> dict[str, Any]:
    """The checkpoint's data settings (metre rule, split rule, max_files ...) with `root`/`cache_dir` swapped in.

    Why the checkpoint's: the split and metre rules define which songs are "test" and how they were tokenized,
    so any other choice would not measure the model on the data it was trained for. `cache_dir` here is the
    user's folder when given, else the checkpoint's own; `open_eval_cache` only *reads* the latter (paths
    that are written never come from a loaded file).
    """
    from ..data.options import DataOptions

    stored = dict(ckpt_config.get("data") or {})
    if not stored:
        raise UserError("the checkpoint carries no data config; pass data.root=... and data.cache_dir=...")
    known = {f.name for f in dataclasses.fields(DataOptions)}
    data = {k: v for k, v in stored.items() if k in known}  # an older checkpoint's retired keys are not options
    data.setdefault("cache_dir", f"cache/{data.get('name', 'data')}")
    own_root = _existing_path(data.get("root", ""))
    data["cache_dir"] = str(cache_dir) if cache_dir is not None else str(_existing_path(data["cache_dir"]))
    data["root"] = str(root) if root is not None else str(own_root)
    data["download"] = False  # evaluation never fetches data behind the user's back
    if align is not None:  # data.align_beats=: the songs read otherwise than the checkpoint's training read them
        data["align_beats"] = bool(align)
    return data


def default_eval_cache_dir(data: Mapping[str, Any], vocab: Any) -> Path:
    """Where evaluate builds a cache when the checkpoint's own cannot be used as it is: `cache/eval-<name>-<tag>`
    in the working directory, the tag hashing the data root, split and metre rules and the vocabulary."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(data.get("name") or "data")).strip("._") or "data"
    what = json.dumps({"root": str(Path(str(data.get("root", ""))).resolve()), "split": str(data.get("split")),
                       "time_signature": str(data.get("time_signature")), "max_files": data.get("max_files"),
                       "vocab": vocab.fingerprint, **({"align_beats": True} if data.get("align_beats") else {})},
                      sort_keys=True)
    return Path("cache") / f"eval-{name[:40]}-{hashlib.sha1(what.encode()).hexdigest()[:10]}"


def open_eval_cache(ckpt_config: Mapping[str, Any], vocab: Any, root: str | None = None,
                    cache_dir: str | None = None, progress: bool = True, align: bool | None = None) -> Any:
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

    data = eval_data_config(ckpt_config, root, cache_dir, align)
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


def split_songs(cache: Any, split: str, max_files: int | None) -> list[Any]:
    """The first `max_files` songs of `split` (all when None); a UserError when the split is empty."""
    songs = cache.split(split)
    if not songs:
        root = cache.manifest.get("settings", {}).get("root")
        raise UserError(f"{cache.dir}: the '{split}' split has no songs (data.root={root})")
    return songs[: int(max_files)] if max_files else songs
