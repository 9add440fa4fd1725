"""Corpus preparation: MIDI folder -> token cache, in parallel, skipping and reporting bad files.

    python -m musicgen.data.prepare data=pop909 data.root=/path/to/pop909

An unchanged corpus is not re-tokenized: files whose SHA-1 (and tokenizer settings and metre) match the
existing manifest keep their cached ids.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from ..tokenizer import MidiReadError, REMITokenizer, TokenizerConfig
from .cache import TokenCache, write_cache
from .download import download_pop909
from .sources import SourceFile, list_sources

_worker_tokenizer: REMITokenizer | None = None


def _init_worker(tokenizer_cfg: dict[str, Any]) -> None:
    global _worker_tokenizer
    _worker_tokenizer = REMITokenizer(tokenizer_cfg)


def _tokenize(source: SourceFile) -> tuple[str, np.ndarray | None, str]:
    """(relpath, ids or None, reason when None). Runs in a worker process."""
    assert _worker_tokenizer is not None
    try:
        ids = _worker_tokenizer.encode(source.path, source.time_signature)
    except MidiReadError as exc:
        return source.relpath, None, exc.cause
    except Exception as exc:  # a file that parses but breaks tokenization must not stop the corpus
        return source.relpath, None, f"tokenization failed ({type(exc).__name__}: {exc})"
    if len(ids) <= 2:
        return source.relpath, None, "no notes"
    return source.relpath, np.asarray(ids, dtype=np.uint16), ""


def file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def _settings(data_cfg: Mapping[str, Any], tokenizer_cfg: TokenizerConfig) -> dict[str, Any]:
    """What the cached ids depend on besides the files themselves."""
    return {"root": str(Path(str(data_cfg["root"])).resolve()), "time_signature": str(data_cfg.get("time_signature")),
            "split": str(data_cfg.get("split")), "tokenizer": tokenizer_cfg.to_dict()}


def prepare_corpus(data_cfg: Mapping[str, Any], tokenizer_cfg: Mapping[str, Any] | TokenizerConfig,
                   progress: bool = True) -> TokenCache:
    """Make sure `data_cfg.cache_dir` holds an up-to-date token cache of `data_cfg.root`, and open it."""
    if not isinstance(tokenizer_cfg, TokenizerConfig):
        tokenizer_cfg = TokenizerConfig.from_mapping(tokenizer_cfg)
    root = Path(str(data_cfg["root"]))
    if data_cfg.get("download") and not any(root.glob("*.mid")):
        if data_cfg.get("name") != "pop909":
            raise ValueError("data.download=true is only available for data=pop909")
        download_pop909(root)
    sources = list_sources(data_cfg)
    cache_dir = Path(str(data_cfg["cache_dir"]))
    settings = _settings(data_cfg, tokenizer_cfg)
    tokenizer = REMITokenizer(tokenizer_cfg)

    previous: dict[str, tuple[str, np.ndarray]] = {}
    if (cache_dir / "manifest.json").exists():
        try:
            old = TokenCache(cache_dir)
            if old.manifest.get("settings") == settings and old.vocab.tokens == tokenizer.vocab.tokens:
                previous = {s.relpath: (s.sha1, old.song_tokens(s)) for s in old.songs}
                previous.update({b["path"]: (b.get("sha1", ""), None) for b in old.manifest.get("bad_files", [])})
        except (OSError, ValueError, KeyError, json.JSONDecodeError):
            previous = {}

    hashes = {s.relpath: file_sha1(s.path) for s in sources}
    todo = [s for s in sources if s.relpath not in previous or previous[s.relpath][0] != hashes[s.relpath]]
    results: dict[str, tuple[np.ndarray | None, str]] = {}
    for s in sources:
        if s not in todo:
            ids = previous[s.relpath][1]
            results[s.relpath] = (ids, "" if ids is not None else "previously unreadable")
    unchanged = len(sources) - len(todo)
    if todo:
        workers = int(data_cfg.get("num_workers") or 0) or os.cpu_count() or 1
        workers = min(workers, len(todo))
        desc = f"tokenize {root.name or root}"
        if workers > 1:
            with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(
                    workers, initializer=_init_worker, initargs=(tokenizer_cfg.to_dict(),)) as pool:
                for relpath, ids, reason in tqdm(pool.imap_unordered(_tokenize, todo, chunksize=4), total=len(todo),
                                                 desc=desc, disable=not progress, unit="file"):
                    results[relpath] = (ids, reason)
        else:
            _init_worker(tokenizer_cfg.to_dict())
            for source in tqdm(todo, desc=desc, disable=not progress, unit="file"):
                relpath, ids, reason = _tokenize(source)
                results[relpath] = (ids, reason)

    songs, bad = [], []
    for s in sources:
        ids, reason = results[s.relpath]
        if ids is None:
            bad.append((s.relpath, reason or "unreadable", hashes[s.relpath]))
        else:
            songs.append((s.relpath, hashes[s.relpath], s.split, ids))
    cache = write_cache(cache_dir, tokenizer.vocab, songs, settings, bad,
                        last_run={"tokenized": len(todo), "unchanged": unchanged})
    if progress:
        n_tokens = sum(len(ids) for *_, ids in songs)
        print(f"corpus {root}: {len(songs)} songs, {n_tokens:,} tokens ({unchanged} unchanged, "
              f"{len(todo)} tokenized), {len(bad)} skipped -> {cache_dir}"
              + (f" (reasons in {cache_dir / 'bad_files.log'})" if bad else ""))
        for path, reason, _ in bad[:10]:
            print(f"  skipped {path}: {reason}")
        if len(bad) > 10:
            print(f"  ... and {len(bad) - 10} more")
    return cache


def main() -> None:
    """Hydra entry point: `python -m musicgen.data.prepare data=pop909 data.root=...`."""
    from ..config import hydra_main

    @hydra_main()
    def _run(cfg) -> None:
        prepare_corpus(cfg.data, cfg.tokenizer)

    _run()


if __name__ == "__main__":
    main()
