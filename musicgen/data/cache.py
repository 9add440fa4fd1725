"""The token cache: one flat uint16 array of every song's ids, a manifest, the vocabulary and a bad-file log.

Layout of `cache_dir`:
- `tokens-<hash>.bin` all songs' ids back to back (uint16, read as a numpy memmap, so training never loads it
  all); the name carries the first 16 hex digits of the SHA-1 of its bytes (content-addressed);
- `manifest.json` the commit point: the name, size and SHA-1 of that token file, the vocabulary, per song its
  relative path, SHA-1 of the file, cache key (see `musicgen.data.prepare.song_key`), split, offset and length
  in tokens; plus the data settings the cache was made with and the files that could not be tokenized;
- `vocab.json`   a copy of the vocabulary for people and tools (the manifest's copy is the one that counts);
- `bad_files.log` one line per file that could not be tokenized, with the reason.

Crash safety: every file is written to a per-process temp name, fsynced and renamed into place. A new token
file never replaces an old one (its name is new), and the manifest, renamed last, is what switches the cache
over; old token files are deleted only after that. So a kill at any instant leaves either the old cache or
the new one, never a manifest pointing at tokens it does not describe. Opening a cache verifies it (file
size, SHA-1, offsets, every id inside the vocabulary) and raises `CacheError` when anything is off;
`prepare_corpus` then rebuilds it. Writers hold an exclusive lock on `cache_dir/.lock` (two prepare runs
never interleave; the second waits and finds the cache up to date), readers a shared one while opening.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..atomic import atomic_write_bytes
from ..tokenizer import Vocabulary

TOKEN_DTYPE = np.uint16
MANIFEST_VERSION = 2
TOKEN_FILE_PREFIX = "tokens-"


class CacheError(ValueError):
    """A token cache that is damaged, incomplete, foreign or from an older version (one line, names it)."""


@dataclass(frozen=True)
class SongEntry:
    relpath: str
    sha1: str
    split: str
    offset: int
    length: int
    key: str = ""  # hash of every input of its tokenization (file, tokenizer settings, metre)


def bytes_sha1(data: bytes | memoryview | np.ndarray) -> str:
    return hashlib.sha1(memoryview(data).cast("B") if not isinstance(data, bytes) else data).hexdigest()


# --------------------------------------------------------------------------------------------------------- #
# Locking
# --------------------------------------------------------------------------------------------------------- #
_HELD_EXCLUSIVE: set[str] = set()  # cache folders this process is writing (its readers skip the shared lock)


@contextlib.contextmanager
def cache_lock(cache_dir: Path, exclusive: bool, message: str | None = None) -> Iterator[None]:
    """flock on `cache_dir/.lock`: exclusive for writers, shared for readers (no-op without fcntl, or when the
    folder has no lock file: a reader never creates one, so reading a cache writes nothing in its folder).
    Re-entrant inside a process that holds the exclusive lock."""
    key = str(Path(cache_dir).resolve())
    if key in _HELD_EXCLUSIVE:
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(cache_dir) / ".lock"
    try:
        handle = open(path, "a+" if exclusive else "r")
    except OSError:
        if exclusive:
            raise
        yield
        return
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
        except OSError:
            if message:
                print(message, file=sys.stderr, flush=True)
            fcntl.flock(handle.fileno(), mode)
        if exclusive:
            _HELD_EXCLUSIVE.add(key)
        try:
            yield
        finally:
            _HELD_EXCLUSIVE.discard(key)
    finally:
        handle.close()


# --------------------------------------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------------------------------------- #
class TokenCache:
    """Read access to a prepared corpus, verified on open (see the module docstring)."""

    def __init__(self, cache_dir: str | Path, verify: bool = True) -> None:
        self.dir = Path(cache_dir)
        manifest_path = self.dir / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.dir}: no token cache here (run `python -m musicgen.data.prepare`)")
        with cache_lock(self.dir, exclusive=False):
            self._open(manifest_path, verify)

    def _fail(self, problem: str) -> CacheError:
        return CacheError(f"token cache {self.dir}: {problem}; rebuild it with `python -m musicgen.data.prepare` "
                          "(train.py and evaluate.py do so automatically)")

    def _open(self, manifest_path: Path, verify: bool) -> None:
        try:
            self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise self._fail(f"manifest.json cannot be read ({type(exc).__name__})") from None
        if not isinstance(self.manifest, dict) or self.manifest.get("version") != MANIFEST_VERSION:
            version = self.manifest.get("version") if isinstance(self.manifest, dict) else None
            raise self._fail(f"manifest version {version} (this musicgen reads version {MANIFEST_VERSION})")
        try:
            self.vocab = Vocabulary.from_dict(self.manifest["vocab"], source=f"token cache {self.dir}")
            self.songs = [SongEntry(**s) for s in self.manifest["songs"]]
            info = self.manifest["tokens"]
            name, count, digest = str(info["file"]), int(info["count"]), str(info["sha1"])
        except (KeyError, TypeError, ValueError) as exc:
            raise self._fail(f"manifest.json is incomplete ({type(exc).__name__}: {exc})") from None
        if self.vocab.fingerprint != self.manifest.get("vocab_fingerprint"):
            raise self._fail("the vocabulary does not match its fingerprint")
        offset = 0
        for song in self.songs:
            if song.offset != offset or song.length < 0:
                raise self._fail(f"song {song.relpath} has offset {song.offset}, expected {offset}")
            offset += song.length
        if offset != count:
            raise self._fail(f"its songs hold {offset} tokens but the token file {count}")
        self.token_file = self.dir / name
        if count == 0:
            self.tokens = np.zeros(0, dtype=TOKEN_DTYPE)
            return
        if Path(name).name != name or not self.token_file.is_file():
            raise self._fail(f"the token file {name} is missing")
        size = self.token_file.stat().st_size
        if size != count * np.dtype(TOKEN_DTYPE).itemsize:
            raise self._fail(f"{name} holds {size} bytes, the manifest says {count * 2}")
        self.tokens = np.memmap(self.token_file, dtype=TOKEN_DTYPE, mode="r", shape=(count,))
        if verify:
            if bytes_sha1(self.tokens) != digest:
                raise self._fail(f"{name} is damaged (its SHA-1 does not match the manifest)")
            top = int(self.tokens.max())
            if top >= len(self.vocab):
                raise self._fail(f"{name} holds id {top}, outside the vocabulary of {len(self.vocab)} tokens")

    def split(self, name: str) -> list[SongEntry]:
        return [s for s in self.songs if s.split == name]

    def song_tokens(self, song: SongEntry) -> np.ndarray:
        return np.asarray(self.tokens[song.offset: song.offset + song.length])

    def __repr__(self) -> str:
        counts = {name: sum(s.length for s in self.split(name)) for name in ("train", "valid", "test")}
        return f"TokenCache({self.dir}, {len(self.songs)} songs, tokens per split {counts})"


# --------------------------------------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------------------------------------- #
def remove_temp_files(cache_dir: Path) -> None:
    """Temp files of writers that were killed (only call with the exclusive lock held: no writer is active)."""
    for path in cache_dir.glob(".*.tmp-*"):
        with contextlib.suppress(OSError):
            path.unlink()


def write_cache(cache_dir: Path, vocab: Vocabulary, songs: list[tuple[str, str, str, np.ndarray, str]],
                settings: dict[str, Any], bad_files: list[tuple[str, str, str, str]],
                last_run: dict[str, int] | None = None) -> TokenCache:
    """Write a complete cache from (relpath, sha1, split, ids, key) songs and (relpath, reason, sha1, key) bad
    files, replacing any previous cache atomically (see the module docstring for the order of the writes)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    with cache_lock(cache_dir, exclusive=True):
        remove_temp_files(cache_dir)
        entries, arrays, offset = [], [], 0
        for relpath, sha1, split, ids, key in songs:
            entries.append(SongEntry(relpath, sha1, split, offset, len(ids), key).__dict__)
            arrays.append(np.asarray(ids, dtype=TOKEN_DTYPE))
            offset += len(ids)
        tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=TOKEN_DTYPE)
        data = tokens.tobytes()
        digest = bytes_sha1(data)
        name = f"{TOKEN_FILE_PREFIX}{digest[:16]}.bin"
        target = cache_dir / name
        if not (target.is_file() and target.stat().st_size == len(data) and bytes_sha1(target.read_bytes()) == digest):
            atomic_write_bytes(target, data)
        vocab_dict = vocab.to_dict()
        manifest = {
            "version": MANIFEST_VERSION,
            "vocab_fingerprint": vocab.fingerprint,
            "vocab": vocab_dict,
            "settings": settings,
            "tokens": {"file": name, "count": int(len(tokens)), "bytes": len(data), "sha1": digest},
            "songs": entries,
            "bad_files": [{"path": p, "reason": r, "sha1": h, "key": k} for p, r, h, k in bad_files],
            "last_run": last_run or {},
        }
        atomic_write_bytes(cache_dir / "manifest.json", json.dumps(manifest, indent=1).encode())  # commit point
        # Derived files and clean-up: a kill from here on leaves a valid cache (these are rewritten next time).
        vocab_bytes = json.dumps(vocab_dict, indent=1).encode()
        vocab_path = cache_dir / "vocab.json"
        if not vocab_path.is_file() or vocab_path.read_bytes() != vocab_bytes:
            atomic_write_bytes(vocab_path, vocab_bytes)
        log = "".join(f"{path}\t{reason}\n" for path, reason, *_ in bad_files)
        atomic_write_bytes(cache_dir / "bad_files.log", log.encode())
        for old in [cache_dir / "tokens.bin", *cache_dir.glob(f"{TOKEN_FILE_PREFIX}*.bin")]:
            if old.name != name and old.is_file():
                with contextlib.suppress(OSError):
                    old.unlink()
        return TokenCache(cache_dir)
