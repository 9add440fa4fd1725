"""Atomic file writes: readers (and a run killed at any instant) see the old file or the new one, never half.

One mechanism for the token cache and the checkpoints: write to ``.<name>.tmp-<pid>`` beside the target (a
per-process name, so two writers never share a temp file), fsync, rename over the target, fsync the folder
(so the rename itself survives a crash). Orphaned temp files of killed runs carry that pattern and are
cleaned up by their owners on start.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_savefig"]


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temp file beside ``path`` (creating the folder), then swap it in atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with tmp.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # a full disk, a quota: one line naming the file
        # torch.save reports a failed write as `RuntimeError: [enforce fail at inline_container.cc:672] ...`,
        # with the OSError (ENOSPC, EFBIG ...) as its context
        cause = exc if isinstance(exc, OSError) else exc.__context__
        if not isinstance(cause, OSError) or cause.errno is None or str(path) in str(cause):
            raise
        raise OSError(cause.errno, f"{cause.strerror or cause} while writing {path} (the previous file, if any, "
                                   "is unchanged)") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """:func:`atomic_write` of a bytes object."""
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text (result files: a full disk leaves the old file, never half a JSON)."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_savefig(fig, path: str | Path, **kwargs) -> None:
    """``fig.savefig`` through :func:`atomic_write` (the format from the file's suffix)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, **kwargs))
