"""The token cache: one flat uint16 array of every song's ids, a manifest, the vocabulary and a bad-file log.

Layout of `cache_dir`:
- `tokens.bin`   all songs' ids back to back (uint16, read as a numpy memmap, so training never loads it all);
- `manifest.json` per song: relative path, SHA-1 of the file, split, offset and length in tokens;
  plus the vocabulary fingerprint and the data settings the cache was made with;
- `vocab.json`   the vocabulary (see `musicgen.tokenizer.vocab`);
- `bad_files.log` one line per file that could not be tokenized, with the reason.
Files are replaced atomically, so an interrupted preparation leaves the previous cache intact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..tokenizer import Vocabulary

TOKEN_DTYPE = np.uint16
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class SongEntry:
    relpath: str
    sha1: str
    split: str
    offset: int
    length: int


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class TokenCache:
    """Read access to a prepared corpus."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.dir = Path(cache_dir)
        manifest_path = self.dir / "manifest.json"
        if not manifest_path.exists():
            raise FileNotFoundError(f"{self.dir}: no token cache here (run `python -m musicgen.data.prepare`)")
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        self.vocab = Vocabulary.load(self.dir / "vocab.json")
        self.songs = [SongEntry(**s) for s in self.manifest["songs"]]
        total = sum(s.length for s in self.songs)
        if total:
            self.tokens = np.memmap(self.dir / "tokens.bin", dtype=TOKEN_DTYPE, mode="r", shape=(total,))
        else:
            self.tokens = np.zeros(0, dtype=TOKEN_DTYPE)

    def split(self, name: str) -> list[SongEntry]:
        return [s for s in self.songs if s.split == name]

    def song_tokens(self, song: SongEntry) -> np.ndarray:
        return np.asarray(self.tokens[song.offset: song.offset + song.length])

    def __repr__(self) -> str:
        counts = {name: sum(s.length for s in self.split(name)) for name in ("train", "valid", "test")}
        return f"TokenCache({self.dir}, {len(self.songs)} songs, tokens per split {counts})"


def write_cache(cache_dir: Path, vocab: Vocabulary, songs: list[tuple[str, str, str, np.ndarray]],
                settings: dict[str, Any], bad_files: list[tuple[str, str, str]],
                last_run: dict[str, int] | None = None) -> TokenCache:
    """Write a complete cache from (relpath, sha1, split, ids) tuples and (relpath, reason, sha1) bad files,
    replacing any previous cache atomically (the manifest, written last, is what makes it valid)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    entries, arrays, offset = [], [], 0
    for relpath, sha1, split, ids in songs:
        entries.append(SongEntry(relpath, sha1, split, offset, len(ids)).__dict__)
        arrays.append(np.asarray(ids, dtype=TOKEN_DTYPE))
        offset += len(ids)
    tokens = np.concatenate(arrays) if arrays else np.zeros(0, dtype=TOKEN_DTYPE)
    atomic_write_bytes(cache_dir / "tokens.bin", tokens.tobytes())
    atomic_write_bytes(cache_dir / "vocab.json", json.dumps(vocab.to_dict(), indent=1).encode())
    log = "".join(f"{path}\t{reason}\n" for path, reason, _ in bad_files)
    atomic_write_bytes(cache_dir / "bad_files.log", log.encode())
    manifest = {
        "version": MANIFEST_VERSION,
        "vocab_fingerprint": vocab.fingerprint,
        "settings": settings,
        "songs": entries,
        "bad_files": [{"path": p, "reason": r, "sha1": h} for p, r, h in bad_files],
        "last_run": last_run or {},
    }
    atomic_write_bytes(cache_dir / "manifest.json", json.dumps(manifest, indent=1).encode())
    return TokenCache(cache_dir)
