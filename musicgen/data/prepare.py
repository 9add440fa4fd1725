"""Corpus preparation: MIDI folder -> token cache, in parallel, skipping and reporting bad files.

    python -m musicgen.data.prepare data=pop909 data.root=/path/to/pop909

An unchanged corpus is not re-tokenized: a song keeps its cached ids only when its cache key matches, and
the key covers every input of its tokenization (`song_key`: the file's SHA-1, the tokenizer settings, the
metre it is read with, e.g. from POP909's index.tsv, and the tokenizer's code version). Bad files keep
their reason across runs. The whole preparation holds the cache's exclusive lock (see `musicgen.data.cache`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing as mp
import os
import signal
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from tqdm import tqdm

from ..config import UserError, make_dir
from ..tokenizer import MidiReadError, REMITokenizer, TokenizerConfig, Vocabulary, load_midi
from .beat_phase import BEAT_PHASE_VERSION, align_beats
from .cache import TokenCache, cache_lock, write_cache
from .download import download_pop909
from .sources import SourceFile, list_sources
from .options import DataOptions, data_options
from .stats import read_corpus_statistics

_worker_tokenizer: REMITokenizer | None = None


def _init_worker(tokenizer_cfg: dict[str, Any]) -> None:
    global _worker_tokenizer
    _worker_tokenizer = REMITokenizer(tokenizer_cfg)


def _init_pool_worker(tokenizer_cfg: dict[str, Any]) -> None:
    """A pool worker: Ctrl-C (sent to the whole process group) is the parent's to handle, so no worker prints
    a KeyboardInterrupt traceback; and a worker dies with its parent (on Linux), instead of waiting forever
    for work from a parent that a SIGTERM or SIGKILL has ended."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
    _init_worker(tokenizer_cfg)


def _tokenize(source: SourceFile) -> tuple[str, np.ndarray | None, str]:
    """(relpath, ids or None, reason when None). Runs in a worker process."""
    assert _worker_tokenizer is not None
    try:
        ids = encode_source(_worker_tokenizer, source.path, source.time_signature, source.align_beats)
    except MidiReadError as exc:
        return source.relpath, None, exc.cause
    except Exception as exc:  # noqa: BLE001 - a file that parses but breaks tokenization must not stop the corpus
        return source.relpath, None, f"tokenization failed ({type(exc).__name__}: {exc})"
    if len(ids) <= 2:
        return source.relpath, None, "no notes"
    return source.relpath, np.asarray(ids, dtype=np.uint16), ""


#: Bump when a change to the tokenizer's code changes the ids it produces: every cached song is re-tokenized.
TOKENIZATION_VERSION = 1


def file_sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def encode_source(tokenizer: REMITokenizer, path: Path, time_signature: tuple[int, int] | None,
                  align: bool = False) -> list[int]:
    """A corpus file's token ids as training sees them: read with its metre, its beats put on the grid first
    when the corpus asks for it (`data.align_beats`, `musicgen.data.beat_phase`)."""
    if not align:
        return tokenizer.encode(path, time_signature)
    midi = load_midi(path)
    align_beats(midi)
    try:
        return tokenizer.encode(midi, time_signature)
    except MidiReadError as exc:
        raise MidiReadError(path, exc.cause) from None


def song_key(file_sha1: str, tokenizer_cfg: TokenizerConfig, time_signature: tuple[int, int] | None,
             align: bool = False) -> str:
    """Hash of every input of one song's tokenization: its bytes, the tokenizer settings, the metre it is read
    with (None = the file's own events), whether its beats are aligned and `TOKENIZATION_VERSION`. Equal keys
    mean equal ids. (Alignment enters the key only when on, so the caches written before it keep theirs.)"""
    metre = "file" if time_signature is None else f"{time_signature[0]}/{time_signature[1]}"
    what: dict[str, Any] = {"sha1": file_sha1, "tokenizer": tokenizer_cfg.to_dict(), "metre": metre,
                            "version": TOKENIZATION_VERSION}
    if align:
        what["align_beats"] = BEAT_PHASE_VERSION
    blob = json.dumps(what, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()


def _settings(data: DataOptions, tokenizer_cfg: TokenizerConfig) -> dict[str, Any]:
    """What the cached ids depend on besides the files themselves."""
    return {"root": str(Path(data.root).resolve()), "time_signature": data.time_signature, "split": data.split,
            "tokenizer": tokenizer_cfg.to_dict(), "align_beats": data.align_beats}


def _previous_results(cache_dir: Path, tokenizer: REMITokenizer, progress: bool, replace_other_vocabulary: bool = True
                      ) -> dict[str, tuple[np.ndarray | None, str]]:
    """Cache key -> (ids, "") or (None, reason) from the existing cache, when it is valid and of this vocabulary."""
    if not (cache_dir / "manifest.json").exists():
        return {}
    try:
        old = TokenCache(cache_dir)
    except (OSError, ValueError, KeyError) as exc:
        if progress:
            print(f"{' '.join(str(exc).split(';')[0].split())}: rebuilding it", flush=True)
        return {}
    if old.vocab.tokens != tokenizer.vocab.tokens:
        if not replace_other_vocabulary:
            raise UserError(f"data.cache_dir={cache_dir} holds a token cache of another vocabulary "
                            f"({old.vocab.fingerprint}, not {tokenizer.vocab.fingerprint}); it is not overwritten: "
                            "pick another data.cache_dir (or delete that folder)")
        return {}
    previous: dict[str, tuple[np.ndarray | None, str]] = {}
    for song in old.songs:
        if song.key:
            previous[song.key] = (old.song_tokens(song), "")
    for entry in old.manifest.get("bad_files", []):
        if entry.get("key"):
            previous[entry["key"]] = (None, str(entry.get("reason") or "unreadable"))
    return previous


WORKER_DIED = "the process tokenizing it died (killed, e.g. by the out-of-memory killer)"


def _tokenize_in_workers(todo: list[SourceFile], workers: int, tokenizer_cfg: dict[str, Any]):
    """Yield `_tokenize` of every file of `todo` from `workers` processes, in completion order.

    A worker that dies (SIGKILL, the OOM killer) breaks the pool instead of hanging it (`multiprocessing.Pool`
    respawned the worker and waited forever for its lost file). The files left are then tokenized one worker
    at a time, so a file that kills its worker again is known: it is reported as bad and the run goes on.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    context = mp.get_context("spawn" if os.name == "nt" else "fork")
    pending, isolate = list(todo), False
    while pending:
        executor = ProcessPoolExecutor(1 if isolate else min(workers, len(pending)), mp_context=context,
                                       initializer=_init_pool_worker, initargs=(tokenizer_cfg,))
        broken, done = False, set()
        try:
            futures = {executor.submit(_tokenize, source): source for source in pending}
            for future in as_completed(futures):
                error = future.exception()
                if isinstance(error, BrokenProcessPool):
                    broken = True
                    continue
                if error is not None:
                    raise error
                done.add(futures[future].relpath)
                yield future.result()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
        pending = [source for source in pending if source.relpath not in done]
        if not broken:
            break
        if isolate and pending:  # one worker, files in order: the first unfinished one was running
            yield pending[0].relpath, None, WORKER_DIED
            pending = pending[1:]
        isolate = True


def _prepare_locked(data: DataOptions, tokenizer_cfg: TokenizerConfig, tokenizer: REMITokenizer,
                    sources: list[SourceFile], cache_dir: Path, settings: dict[str, Any], root: Path,
                    progress: bool, replace_other_vocabulary: bool = True,
                    skipped: list[tuple[str, str]] = ()):
    previous = _previous_results(cache_dir, tokenizer, progress, replace_other_vocabulary)
    bad = [(name, reason, "", "") for name, reason in skipped]  # names not valid UTF-8 (list_sources)
    hashes: dict[str, str] = {}
    readable = []
    for s in sources:
        try:
            hashes[s.relpath] = file_sha1(s.path)
        except OSError as exc:  # unreadable (permissions, an I/O error): skipped and reported, not fatal
            bad.append((s.relpath, f"cannot read the file ({exc.strerror or exc})", "", ""))
            continue
        readable.append(s)
    sources = readable
    keys = {s.relpath: song_key(hashes[s.relpath], tokenizer_cfg, s.time_signature, s.align_beats) for s in sources}
    todo = [s for s in sources if keys[s.relpath] not in previous]
    results: dict[str, tuple[np.ndarray | None, str]] = {}
    for s in sources:
        if keys[s.relpath] in previous:
            results[s.relpath] = previous[keys[s.relpath]]
    unchanged = len(sources) - len(todo)
    if todo:
        workers = data.num_workers or os.cpu_count() or 1
        workers = min(workers, len(todo))
        desc = f"tokenize {root.name or root}"
        if workers > 1:
            with tqdm(total=len(todo), desc=desc, disable=not progress, unit="file") as bar:
                for relpath, ids, reason in _tokenize_in_workers(todo, workers, tokenizer_cfg.to_dict()):
                    results[relpath] = (ids, reason)
                    bar.update()
        else:
            _init_worker(tokenizer_cfg.to_dict())
            for source in tqdm(todo, desc=desc, disable=not progress, unit="file"):
                relpath, ids, reason = _tokenize(source)
                results[relpath] = (ids, reason)

    songs = []
    for s in sources:
        ids, reason = results[s.relpath]
        if ids is None:
            # a worker's death may be passing memory pressure: not remembered, the next run tries the file again
            key = "" if reason == WORKER_DIED else keys[s.relpath]
            bad.append((s.relpath, reason or "unreadable", hashes[s.relpath], key))
        else:
            songs.append((s.relpath, hashes[s.relpath], s.split, ids, keys[s.relpath]))
    cache = write_cache(cache_dir, tokenizer.vocab, songs, settings, bad,
                        last_run={"tokenized": len(todo), "unchanged": unchanged})
    return cache, songs, bad, todo, unchanged


def prepare_corpus(data: DataOptions | Mapping[str, Any], tokenizer_cfg: Mapping[str, Any] | TokenizerConfig,
                   progress: bool = True, replace_other_vocabulary: bool = True) -> TokenCache:
    """Make sure `data.cache_dir` holds an up-to-date token cache of `data.root`, and open it.

    A damaged or outdated cache there is rebuilt. One of another vocabulary is replaced too (training with new
    tokenizer settings), unless `replace_other_vocabulary` is false (evaluate): then it is a UserError.
    """
    data = data_options(data)
    if not isinstance(tokenizer_cfg, TokenizerConfig):
        tokenizer_cfg = TokenizerConfig.from_mapping(tokenizer_cfg)
    root = Path(data.root)
    if data.download and not any(root.glob("*.mid")):
        if data.name != "pop909":
            raise ValueError("data.download=true is only available for data=pop909")
        download_pop909(root)
    skipped: list[tuple[str, str]] = []
    sources = list_sources(data, skipped)
    cache_dir = Path(data.cache_dir)
    settings = _settings(data, tokenizer_cfg)
    tokenizer = REMITokenizer(tokenizer_cfg)
    forced = {s.time_signature for s in sources if s.time_signature is not None}
    if data.time_signature not in ("file", "index") and forced:
        metre = next(iter(forced))
        if metre not in tokenizer.vocab.time_signatures:
            raise UserError(f"data.time_signature={data.time_signature}: a grid of {tokenizer_cfg.grid} "
                            "steps per whole note cannot represent that metre (a bar must be a whole number of "
                            "steps, at most four whole notes); use e.g. 4/4, 3/4 or file")

    make_dir(cache_dir, "data.cache_dir")
    with cache_lock(cache_dir, exclusive=True, message=f"waiting for another process preparing {cache_dir} ..."):
        cache, songs, bad, todo, unchanged = _prepare_locked(data, tokenizer_cfg, tokenizer, sources, cache_dir,
                                                            settings, root, progress, replace_other_vocabulary,
                                                            skipped)
        stats = read_corpus_statistics(cache)  # the decoding bounds of this corpus (written when stale)
    if progress:
        n_tokens = sum(len(song[3]) for song in songs)
        print(f"corpus {root}: {len(songs)} songs, {n_tokens:,} tokens ({unchanged} unchanged, "
              f"{len(todo)} tokenized), {len(bad)} skipped -> {cache_dir}"
              + (f" (reasons in {cache_dir / 'bad_files.log'})" if bad else ""))
        for path, reason, *_ in bad[:10]:
            print(f"  skipped {path}: {reason}")
        if len(bad) > 10:
            print(f"  ... and {len(bad) - 10} more")
        bounds = ", ".join(f"{k} {v}" for k, v in stats["decoding"].items())
        print(f"  decoding bounds measured on its {stats['songs']} {stats['split']} songs: {bounds}")
    return cache


def current_cache(data: DataOptions | Mapping[str, Any], tokenizer_cfg: Mapping[str, Any] | TokenizerConfig,
                  ) -> TokenCache | None:
    """The cache in `data.cache_dir` when it is exactly what `prepare_corpus` would write now (same
    vocabulary; every file present with the same cache key and split), opened and verified; else None.

    Read-only: nothing is written, so it is safe on a folder named by a loaded checkpoint (evaluate).
    """
    data = data_options(data)
    if not isinstance(tokenizer_cfg, TokenizerConfig):
        tokenizer_cfg = TokenizerConfig.from_mapping(tokenizer_cfg)
    cache_dir = Path(data.cache_dir)
    if not (cache_dir / "manifest.json").is_file():
        return None
    skipped: list[tuple[str, str]] = []
    sources = list_sources(data, skipped)
    try:
        cache = TokenCache(cache_dir)
    except (OSError, ValueError):
        return None
    if cache.vocab.tokens != Vocabulary(tokenizer_cfg).tokens:
        return None
    songs = {s.relpath: s for s in cache.songs}
    bad = {str(b.get("path")): b for b in cache.manifest.get("bad_files", [])}
    if len(songs) + len(bad) != len(sources) + len(skipped) or any(name not in bad for name, _ in skipped):
        return None
    for source in sources:
        try:
            key = song_key(file_sha1(source.path), tokenizer_cfg, source.time_signature,
                           source.align_beats)
        except OSError:
            return None
        entry = songs.get(source.relpath)
        if entry is not None:
            if entry.key != key or entry.split != source.split:
                return None
        elif bad.get(source.relpath, {}).get("key") != key:
            return None
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
