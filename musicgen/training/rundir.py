"""The checkpoint folder of a run: where it is, what a run may do to it, and one run at a time in it.

Work is never destroyed silently: train.resume=true with nothing to resume, or a fresh run into a folder that
holds checkpoints, is a one-line error; the folder is locked for the run; temp files of killed saves are removed.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..config import UserError, make_dir
from .options import TrainOptions

__all__ = ["resume_mode", "resume_path", "ckpt_dir_of", "CheckpointDirLock", "remove_orphaned_temp_files",
           "guard_checkpoint_dir"]


def resume_mode(resume: Any) -> str | Path:
    """train.resume as "false" | "true" | "auto" | a checkpoint Path."""
    if resume in (None, False) or str(resume).lower() in ("false", "none", "null", ""):
        return "false"
    if resume is True or str(resume).lower() == "true":
        return "true"
    if str(resume).lower() == "auto":
        return "auto"
    return Path(str(resume)).expanduser()


def resume_path(opts: TrainOptions, ckpt_dir: Path) -> Path | None:
    """The checkpoint this run continues, or None for a fresh run (see `options.RESUME_CHOICES`).

    train.resume=true with no last.pt is an error, never a silent fresh start: a typo in train.ckpt_dir (or a
    kill before the first save) would otherwise start from step 0 and overwrite a good best.pt.
    """
    mode = resume_mode(opts.resume)
    last = ckpt_dir / "last.pt"
    if mode == "false":
        return None
    if mode == "true":
        if not last.is_file():
            raise UserError(f"train.resume=true: nothing to resume, {last} does not exist (check train.ckpt_dir; "
                            "train.resume=auto starts a fresh run when there is no last.pt)")
        return last
    if mode == "auto":
        return last if last.is_file() else None
    if not mode.is_file():
        raise FileNotFoundError(f"train.resume={opts.resume}: no such checkpoint")
    return mode


def ckpt_dir_of(opts: TrainOptions, run_dir: Path) -> Path:
    """Where checkpoints go: train.ckpt_dir, else <run dir>/checkpoints."""
    return Path(opts.ckpt_dir) if opts.ckpt_dir else run_dir / "checkpoints"


class CheckpointDirLock:
    """An exclusive `flock` on `<ckpt_dir>/.lock` for the whole run: two runs never write one folder.

    The kernel drops the lock when the process ends, however it ends (kill -9 included), so a stale
    `.lock` file never blocks a later run. (No locking where `fcntl` is missing, i.e. on Windows.)
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self._handle: Any = None

    def acquire(self) -> "CheckpointDirLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise UserError(f"train.ckpt_dir={self.path.parent} is in use by another training run ({owner}); "
                            "wait for it to finish or pick another train.ckpt_dir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file drops the flock
            self._handle = None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers cannot be in use: we are not saving now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def remove_orphaned_temp_files(folder: Path) -> list[Path]:
    """Delete `.<name>.tmp-<pid>` files that a killed save left behind (their writer is gone)."""
    removed = []
    for path in folder.glob(".*.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_file() and (not pid.isdigit() or not _pid_alive(int(pid))):
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    return removed


def guard_checkpoint_dir(opts: TrainOptions, ckpt_dir: Path, is_main: bool) -> CheckpointDirLock | None:
    """Before anything is built: refuse a run that would destroy checkpoints, lock the folder, tidy it.

    - train.resume=true with no last.pt: error (see `resume_path`);
    - a run that does not continue a checkpoint of this folder, into a folder holding checkpoints (*.pt):
      error, since its first validation would overwrite best.pt and its first save last.pt;
    - another run holding the folder: error (`CheckpointDirLock`);
    - orphaned temp files of killed saves: deleted.
    The lock (rank 0 only; the other ranks never write) is returned for the caller to release.
    """
    resume_from = resume_path(opts, ckpt_dir)
    continues_here = resume_from is not None and resume_from.resolve().parent == ckpt_dir.resolve()
    if not is_main:
        return None
    make_dir(ckpt_dir, "train.ckpt_dir")
    lock = CheckpointDirLock(ckpt_dir).acquire()
    try:
        removed = remove_orphaned_temp_files(ckpt_dir)
        if removed:
            tqdm.write(f"removed {len(removed)} temporary file(s) left by a killed save in {ckpt_dir}")
        existing = sorted(p.name for p in ckpt_dir.glob("*.pt") if p.is_file())
        if existing and not continues_here:
            resume = resume_mode(opts.resume)
            why = "a fresh run" if resume_from is None else f"resuming from {resume_from}"
            raise UserError(f"train.ckpt_dir={ckpt_dir} already holds {', '.join(existing)}; {why} would overwrite "
                            f"{'them' if len(existing) > 1 else 'it'}. Continue that run with train.resume=true"
                            f"{'' if resume == 'false' else ' (it needs a last.pt)'}, or pick another train.ckpt_dir")
    except BaseException:
        lock.release()
        raise
    return lock
