"""Generation jobs: a small worker pool, each job's progress, and the temporary folder that holds its files.

Why jobs and polling: a long piece takes minutes on a CPU, longer than a browser (or a proxy) waits for one HTTP
answer, and the page should show how far it has got. A Generate press therefore only queues a job (HTTP 202) and
the page polls `GET /api/jobs/<id>` for `tokens` written so far (`generate_with(..., on_progress=...)`).

Why no shared model and no lock: each job calls the public API `generate_with`, which loads the checkpoint
itself (0.14-0.23 s for the shipped 7 MB model, measured on the 2-core CI machine, next to 3-25 s for 4 bars).
So concurrent jobs share no mutable state (model, recurrent state, RNG generators, tokenizer) and two tabs can
generate at once without a lock; the pool size (`workers`, default 2 = the CI machine's cores) bounds the CPU
load, and further jobs wait in the queue (their status says `queued`).

Files: every job owns one `tempfile.TemporaryDirectory` (the uploaded prompt, the MIDI/JSON/WAV it writes); it
is deleted when the job is evicted (`keep` finished jobs are kept for download) or the server stops. Nothing
is written anywhere else. An edit ("Regenerate these bars") is a job of its own whose prompt is a copy of the
edited piece's MIDI file, so the version before stays downloadable (the page's Undo) until it is evicted.
An edit keeps its piece's bars, so a planned form's sections (the letters above the roll) carry over to it.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import UserError
from ..generation.api import generate_with
from ..generation.options import GenerateOptions
from . import audio
from .edit import bar_ticks, checkpoint_tokenizer
from .models import model_name
from .params import expected_tokens
from .roll import roll_data

LOG = logging.getLogger("musicgen.studio")
KINDS = {"mid": "audio/midi", "wav": "audio/wav", "json": "application/json"}
#: job folders are `<temp>/musicgen-studio-<pid of the studio>-<random>`: a studio that was killed (no shutdown)
#: leaves its folders behind, and the next studio deletes those of processes that no longer run
FOLDER_PREFIX = "musicgen-studio-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale_folders(temp_root: str | Path | None = None) -> list[Path]:
    """Delete the job folders of studios that no longer run (killed: SIGKILL, a crash); returns them."""
    removed = []
    root = Path(temp_root or tempfile.gettempdir())
    for folder in root.glob(FOLDER_PREFIX + "*"):
        match = re.match(re.escape(FOLDER_PREFIX) + r"(\d+)-", folder.name)
        if not match or not folder.is_dir() or folder.is_symlink():
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        try:
            if folder.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def public_message(message: str, job: "Job") -> str:
    """A job's error without server paths: the job folder's prompt becomes the uploaded file's name."""
    prompt = str(job.folder / "prompt.mid")
    message = message.replace(prompt, f"'{job.prompt_name}'" if job.prompt_name else "the prompt")
    message = message.replace(str(job.folder), "<job folder>")
    checkpoint = str(job.options.checkpoint or "")
    if checkpoint and os.sep in checkpoint:
        message = message.replace(checkpoint, Path(checkpoint).name)
    return message


class Cancelled(Exception):
    """Raised inside a running generation (from its progress callback) when the server stops."""


class Busy(RuntimeError):
    """Too many jobs waiting: the page asks the user to try again later (HTTP 503)."""


@dataclass
class Job:
    """One Generate press: its options, where it stands, and (when done) its pieces."""

    id: str
    options: GenerateOptions
    workdir: tempfile.TemporaryDirectory
    expected: int
    prompt_name: str | None = None
    status: str = "queued"  # queued -> running -> rendering -> done | error
    tokens: int = 0
    limit: int = 0
    error: str | None = None
    log: list[str] = field(default_factory=list)
    pieces: list[dict[str, Any]] = field(default_factory=list)
    seed: int | None = None
    #: an edit ("Regenerate these bars"): the piece it rewrites {"job", "piece", "name", "base", "edit"}
    source: dict[str, Any] | None = None
    #: a planned form's sections carried over from the piece an edit rewrites (an edit keeps the bars)
    sections: list[dict[str, Any]] | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None

    @property
    def folder(self) -> Path:
        return Path(self.workdir.name)

    @property
    def out(self) -> Path:
        return self.folder / "out"

    @property
    def done(self) -> bool:
        return self.status in ("done", "error")

    def snapshot(self) -> dict[str, Any]:
        """What the page polls (JSON-serialisable)."""
        now = self.finished or time.time()
        return {
            "id": self.id, "status": self.status, "tokens": self.tokens, "limit": self.limit or
            int(self.options.stop.token_limit), "expected": self.expected, "error": self.error,
            "log": list(self.log), "pieces": list(self.pieces), "seed": self.seed, "prompt": self.prompt_name,
            "bars": self.options.bars, "num_samples": self.options.num_samples,
            "elapsed": round(now - (self.started or now), 2), "infill": self.options.infill,
            "candidates": self.options.infill_candidates if self.options.infill else None,
            "source": dict(self.source) if self.source else None, "form": self.options.form,
            "model": model_name(self.options.checkpoint or ""),
        }


class JobManager:
    """Runs jobs in a thread pool; finds their files for download; cleans their temporary folders."""

    def __init__(self, synth: audio.Synth, workers: int = 2, keep: int = 24, max_pending: int = 16) -> None:
        self.synth = synth
        self.keep = keep
        self.max_pending = max_pending
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="studio-job")
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()

    # --- submitting -----------------------------------------------------------------------------------------
    def submit(self, build: Callable[[str | None], GenerateOptions], prompt: bytes | None = None,
               prompt_name: str | None = None, source: dict[str, Any] | None = None,
               sections: list[dict[str, Any]] | None = None) -> Job:
        """Write the prompt (if any) into a fresh temporary folder, build the options (UserError on a bad value:
        the folder is removed again), and queue the job. `source`: the piece an edit rewrites (Job.source);
        `sections`: that piece's planned form (Job.sections)."""
        with self._lock:
            pending = sum(1 for j in self._jobs.values() if not j.done)
        if pending >= self.max_pending:
            raise Busy(f"{pending} generations are already queued or running; try again when one has finished")
        workdir = tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-", ignore_cleanup_errors=True)
        try:
            prompt_path = None
            if prompt is not None:
                prompt_path = Path(workdir.name) / "prompt.mid"  # never the client's file name
                prompt_path.write_bytes(prompt)
            options = build(str(prompt_path) if prompt_path else None)
            options = dataclasses.replace(options, output_dir=str(Path(workdir.name) / "out"))
        except BaseException:
            workdir.cleanup()
            raise
        job = Job(uuid.uuid4().hex[:12], options, workdir, expected_tokens(options), prompt_name, source=source,
                  sections=sections)
        with self._lock:
            self._jobs[job.id] = job
        self._pool.submit(self._run, job)
        self._evict()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def piece(self, job_id: str, index: int) -> tuple[Job, dict[str, Any]] | None:
        """A finished job and its piece `index`, or None (no such job or piece, or the job is not done)."""
        job = self.get(job_id)
        if job is None or job.status != "done" or not 0 <= index < len(job.pieces):
            return None
        return job, job.pieces[index]

    def file(self, job_id: str, index: int, kind: str) -> tuple[Path, str] | None:
        """(path, download name) of piece `index`'s .mid/.wav/.json, or None."""
        job = self.get(job_id)
        if job is None or kind not in KINDS or not 0 <= index < len(job.pieces):
            return None
        name = job.pieces[index]["name"]
        path = job.out / f"{name}.{kind}"
        return (path, f"{name}.{kind}") if path.is_file() else None

    # --- running --------------------------------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        job.status, job.started = "running", time.time()

        def progress(done: int, limit: int) -> None:
            job.tokens, job.limit = done, limit
            if self._closing.is_set():  # server stopping: end a long piece within 64 tokens, not minutes
                raise Cancelled()

        try:
            pieces = generate_with(job.options, log=job.log.append, on_progress=progress)
            job.status = "rendering"
            tokenizer = checkpoint_tokenizer(job.options.checkpoint)
            results = []
            for piece in pieces:
                mid = piece.files["mid"]
                wav = mid.with_suffix(".wav")
                how = audio.render(mid, wav, self.synth)
                if job.seed is None and "json" in piece.files:
                    job.seed = json.loads(Path(piece.files["json"]).read_text()).get("seed")
                infilled = [(int(a), int(b)) for a, b in piece.infilled]
                shade = piece.start_tick if piece.prompt_length > 1 and job.options.include_prompt and not infilled \
                    else 0
                try:  # the bars the page numbers and selects for an edit: those `infill` counts
                    measures, bars_error = bar_ticks(mid, tokenizer), None
                except UserError as exc:  # e.g. a piece without a note: nothing to edit, and the page says why
                    measures, bars_error = [], public_message(str(exc), job).replace(str(mid), mid.name)
                base = f"api/jobs/{job.id}/files/{piece.index}"
                source = job.source or {}
                sections = [dict(s) for s in (piece.sections or job.sections or [])]
                results.append({
                    "index": piece.index, "name": piece.name, "notes": piece.n_notes,
                    "continuation_notes": piece.continuation_notes, "bars": piece.n_bars,
                    "seconds": round(piece.seconds, 2), "tokens": len(piece.continuation_ids),
                    "stop_reason": piece.stop_reason, "warnings": list(piece.warnings), "audio": how,
                    "roll": roll_data(mid, shade, infilled, measures, sections),
                    "urls": {kind: f"{base}.{kind}" for kind in KINDS},
                    # editing: the bars `infill` counts (their number), why there are none, what an edit rewrote
                    "measures": len(measures), "bars_error": bars_error, "infilled": [list(span) for span in infilled],
                    "infilled_bars": ",".join(g["bars"] for g in piece.infill) or None,
                    "candidates": [len(g["suffix_logprob"]) for g in piece.infill],
                    "base": source.get("base", piece.name), "edit": source.get("edit", 0),
                    # a planned form: {"letter", "bars", "first_bar" (1-based, prompt included), "from"} each
                    "sections": sections,
                })
            job.pieces = results
            job.status = "done"
        except Cancelled:
            job.error, job.status = "the server stopped before this piece was finished", "error"
        except UserError as exc:  # the library's one-line message (a prompt it cannot read, a metre, memory ...)
            job.error, job.status = public_message(str(exc), job), "error"
        except Exception as exc:  # noqa: BLE001 - never take the server down; the page says what happened
            LOG.error("job %s failed:\n%s", job.id, traceback.format_exc())
            job.error, job.status = public_message(f"internal error: {type(exc).__name__}: {exc}", job), "error"
        finally:
            job.finished = time.time()

    # --- cleaning -------------------------------------------------------------------------------------------
    def _evict(self) -> None:
        """Delete the folders of the oldest finished jobs beyond `keep`."""
        with self._lock:
            finished = sorted((j for j in self._jobs.values() if j.done), key=lambda j: j.created)
            old = finished[:max(0, len(finished) - self.keep)]
            for job in old:
                del self._jobs[job.id]
        for job in old:
            job.workdir.cleanup()

    def shutdown(self) -> None:
        """Stop taking jobs, drop queued ones, cancel running ones, and delete every job's folder."""
        self._closing.set()
        self._pool.shutdown(wait=True, cancel_futures=True)  # running jobs stop at their next progress call
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.workdir.cleanup()
