"""The studio's HTTP side: a small Starlette (ASGI) app, served by uvicorn.

Why Starlette and not Gradio: the page needs a form, a progress bar, piano rolls and <audio> players, which plain
HTML and a page of vanilla JS do; Starlette + uvicorn + python-multipart are three small, well-kept pure-Python
packages, while Gradio brings dozens (FastAPI, pandas, Pillow, huggingface_hub, ...), sends analytics unless told
not to and, before its 2026 releases, loaded fonts and scripts from CDNs; the studio must work offline. Every
byte the page needs is served from ``static/`` by this app.

Routes: ``GET /`` the page, ``GET /static/<file>`` its JS/CSS, ``GET /api/info`` the checkpoint, synthesis and
limits, ``POST /api/jobs`` a Generate press (multipart form, :data:`.params.FIELDS`, a planned form's ``form``,
``form_chords`` and ``form_recall`` among them; optional ``prompt`` file) -> 202 ``{"id": ...}``,
``GET /api/jobs/<id>`` its progress and results, ``GET /api/jobs/<id>/files/<n>.<mid|wav|json>`` downloads,
``POST /api/jobs/<id>/pieces/<n>/infill`` a "Regenerate these bars" press on piece `n` of a finished job (form
fields: ``infill=a-b`` and the page's sampling and control settings, :data:`.params.INFILL_FIELDS`) -> 202
``{"id": ...}`` of a new job whose prompt is a copy of that piece's MIDI file (:mod:`.edit`).
Play mode (:mod:`.streams`, docs/stream.md): ``POST /api/streams`` a Play press (form: seed, sampling, controls,
optional ``prompt`` file) -> 201 ``{"id": ...}`` (503 past ``--max-streams``), ``GET /api/streams/<id>`` its
status, ``GET /api/streams/<id>/events`` its bars as Server-Sent Events (``?from=N`` or ``Last-Event-ID``
resumes, ``?bars=K`` ends after K bars), ``POST /api/streams/<id>/position`` (JSON ``{"bar": x}``: played so
far; the heartbeat), ``POST /api/streams/<id>/steer`` (JSON settings -> the bar they take effect from),
``POST /api/streams/<id>/stop``, ``GET /api/streams/<id>/midi?bars=N`` (Save: the first N bars as MIDI).
Every refusal is a 4xx JSON ``{"error": "one line"}`` that the page shows as it is. Every request first passes
:mod:`.guard` (Host allow-list, Origin check on POST, the per-run token): only the studio's own page drives it.

Uploads: the body is read into memory (refused past the size limit), parsed by python-multipart (which may spool
a part over 1 MiB to an anonymous `tempfile.TemporaryFile` in the system temp folder), checked by
:mod:`.upload`, and only then written, as ``prompt.mid``, into the job's own temporary directory (:mod:`.jobs`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..config import UserError
from . import audio
from .guard import StudioGuard
from .jobs import KINDS, Busy, JobManager, clean_stale_folders
from .edit import check_ranges, checkpoint_tokenizer, edit_name
from .models import model_name, pick_model
from .play import play_routes
from .streams import StreamManager
from .params import FIELDS, INFILL_FIELDS, Limits, build_infill_options, build_options, form_defaults
from .upload import DEFAULT_MAX_UPLOAD_BYTES, UploadError, check_midi, size_text, too_large

STATIC = Path(__file__).resolve().parent / "static"
ASSETS = {"studio.js": "text/javascript", "play.js": "text/javascript", "studio.css": "text/css",
          "favicon.svg": "image/svg+xml"}
FORM_OVERHEAD = 64 * 1024  # the form's text fields and multipart boundaries, on top of the file itself
#: the longest prompt the studio takes, in whole notes (bars of 4/4): with the longest piece it writes (512 bars
#: of up to four whole notes) the result stays within what its piano roll and WAV reader (pretty_midi: 10 M
#: ticks) accept; a longer one was refused only after generating
STUDIO_MAX_PROMPT_WHOLE_NOTES = 2048
LOG = logging.getLogger("musicgen.studio")


@dataclass
class StudioConfig:
    """How the studio runs (the command-line options of ``python -m musicgen.studio``)."""

    checkpoint: str = "checkpoints/musicgen-small.pt"
    device: str = "auto"
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    workers: int = 2
    keep_jobs: int = 24
    soundfont: str | None = None
    limits: Limits = field(default_factory=Limits)
    #: the address it listens on (with localhost/127.0.0.1/::1, the Host names it answers: `guard.py`)
    host: str = "127.0.0.1"
    #: the per-run token its URL carries (None: no token check; the command line always makes one)
    token: str | None = None
    #: more Host names to answer (`--allow-host`, e.g. the machine's name on the network)
    allowed_hosts: tuple[str, ...] = ()
    #: Play mode: streams playing at once, bars written ahead of what a page has played, and how long a stream
    #: whose page is gone (no events connection, no position report) plays on before it is stopped
    max_streams: int = 4
    stream_ahead_bars: int = 2
    stream_idle_seconds: float = 5.0
    #: each stream in its own process (False: threads of the studio's process; see streams.StreamManager)
    stream_processes: bool = True
    #: the (name, path) of the models the page may choose, ``checkpoint`` first (`models.find_models`); empty:
    #: ``checkpoint`` alone
    models: tuple[tuple[str, str], ...] = ()

    def choices(self) -> tuple[tuple[str, str], ...]:
        return self.models or ((model_name(self.checkpoint), self.checkpoint),)


def error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is larger than a `limit`-byte file plus the form around it:
    a huge upload is never buffered or spooled to disk whole, whatever its Content-Length says (or without one)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + FORM_OVERHEAD:
        raise too_large(f"the upload is {size_text(int(declared))}", limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + FORM_OVERHEAD:
            raise too_large(f"the upload is more than {size_text(size)}", limit)
        chunks.append(chunk)
    return b"".join(chunks)


def complete_multipart(body: bytes, content_type: str) -> bool:
    """Whether a multipart body ends with its closing boundary (`--<boundary>--`): a body cut off in transit
    parsed "fine" and ran with default options."""
    boundary = ""
    for part in content_type.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "boundary":
            boundary = value.strip().strip('"')
    return bool(boundary) and body.rstrip(b"\r\n \t").endswith(b"--" + boundary.encode("latin-1") + b"--")


def create_app(config: StudioConfig | None = None) -> Starlette:
    """The studio app; its job pool is started with the app and stopped (temporary folders deleted) with it."""
    config = config or StudioConfig()
    synth = audio.find_synth(config.soundfont)
    for folder in clean_stale_folders():  # left by a studio that was killed
        LOG.info("removed the job folder %s of a studio that no longer runs", folder)
    manager = JobManager(synth, workers=config.workers, keep=config.keep_jobs)
    models = config.choices()
    streams = StreamManager(config.checkpoint, config.device, config.max_streams, config.stream_idle_seconds,
                            config.stream_ahead_bars, processes=config.stream_processes, models=models)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return error(f"no such asset: {name}", 404)
        return FileResponse(STATIC / name, media_type=ASSETS[name])

    async def info(request: Request) -> Response:
        return JSONResponse({
            "version": __version__, "checkpoint": Path(config.checkpoint).name, "synthesis": synth.describe(),
            "models": [name for name, _ in models],
            "uses_fluidsynth": synth.uses_fluidsynth, "max_upload_bytes": config.max_upload_bytes,
            "limits": asdict(config.limits), "workers": config.workers, "fields": list(FIELDS),
            "defaults": form_defaults(), "max_streams": config.max_streams,
            "stream_ahead_bars": config.stream_ahead_bars,
        })

    async def create_job(request: Request) -> Response:
        try:
            body = await read_body(request, config.max_upload_bytes)
        except UploadError as exc:
            return error(str(exc), exc.status)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        content_type = request.headers.get("content-type", "")
        if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return error("send the form as multipart/form-data (the page does this)", 415)
        if content_type.startswith("multipart/form-data") and not complete_multipart(body, content_type):
            return error("the form arrived incomplete (no closing boundary: the upload was cut off?); press "
                         "Generate again")
        try:
            form = await Request(request.scope, replay).form(max_files=1, max_fields=len(FIELDS) + 4)
        except Exception as exc:  # noqa: BLE001 - malformed multipart, too many parts
            return error(f"could not read the form: {exc}")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            checkpoint = pick_model(models, fields.pop("model", None))
        except UserError as exc:
            return error(str(exc))
        prompt, prompt_name = None, None
        upload = form.get("prompt")
        if isinstance(upload, UploadFile) and (upload.filename or upload.size):
            prompt_name = Path(upload.filename or "prompt.mid").name
            data = await upload.read()
            await upload.close()
            try:
                check_midi(data, prompt_name, config.max_upload_bytes, max_whole_notes=STUDIO_MAX_PROMPT_WHOLE_NOTES)
            except UploadError as exc:
                return error(str(exc), exc.status)
            prompt = data
        try:
            job = manager.submit(lambda path: build_options(fields, path, checkpoint, config.device,
                                                            config.limits), prompt, prompt_name)
        except UserError as exc:
            return error(str(exc))
        except Busy as exc:
            return error(str(exc), 503)
        return JSONResponse({"id": job.id, "url": f"api/jobs/{job.id}"}, status_code=202)

    async def infill_job(request: Request) -> Response:
        """Regenerate bars of a shown piece: a new job on a copy of its MIDI file (the old one stays)."""
        job_id, index = request.path_params["job"], request.path_params["index"]
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            return error("send the form as multipart/form-data (the page does this)", 415)
        try:
            body = await read_body(request, 0)  # a form of a few short fields, no file
        except UploadError:
            return error("the form is too large (it holds a few settings, no file)", 413)

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        if content_type.startswith("multipart/form-data") and not complete_multipart(body, content_type):
            return error("the form arrived incomplete (no closing boundary: the upload was cut off?); press "
                         "Regenerate these bars again")
        try:
            form = await Request(request.scope, replay).form(max_files=0, max_fields=len(INFILL_FIELDS) + 4)
        except Exception as exc:  # noqa: BLE001 - malformed multipart, too many parts, a file
            if "files" in str(exc).lower():
                return error("this form takes no file: the piece to edit is already on the server")
            return error(f"could not read the form: {getattr(exc, 'detail', None) or exc}")
        if any(not isinstance(v, str) for v in form.values()):
            return error("this form takes no file: the piece to edit is already on the server")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        try:
            checkpoint = pick_model(models, fields.pop("model", None))
        except UserError as exc:
            return error(str(exc))
        source = manager.get(job_id)
        if source is None:
            return error("no such job (the server may have restarted, or it was evicted; press Generate again)",
                         404)
        if source.status == "error":
            return error("that job ended with an error: it has no piece to edit", 409)
        if source.status != "done":
            return error(f"that job is still {source.status}: its pieces can be edited once it is done", 409)
        found = manager.piece(job_id, index)
        if found is None:
            return error(f"no such piece: job {job_id} has {len(source.pieces)} piece(s)", 404)
        piece = found[1]
        shown = f"{piece['name']}.mid"
        try:
            data = (source.out / shown).read_bytes()
        except OSError:
            return error("that piece's MIDI file is gone (evicted?); press Generate again", 404)
        edit = int(piece.get("edit", 0)) + 1
        origin = {"job": job_id, "piece": index, "name": piece["name"], "base": piece.get("base", piece["name"]),
                  "edit": edit}

        def build(path: str | None) -> Any:
            assert path is not None
            options = build_infill_options(fields, path, checkpoint, config.device, config.limits,
                                           name=edit_name(origin["base"], edit))
            check_ranges(path, str(options.infill), checkpoint_tokenizer(checkpoint), shown)
            return options

        try:  # reading the piece's bars takes a moment for a long piece: not on the event loop
            job = await run_in_threadpool(manager.submit, build, data, shown, origin, piece.get("sections") or None)
        except UserError as exc:
            return error(str(exc))
        except Busy as exc:
            return error(str(exc), 503)
        return JSONResponse({"id": job.id, "url": f"api/jobs/{job.id}"}, status_code=202)

    async def job_status(request: Request) -> Response:
        job = manager.get(request.path_params["job"])
        if job is None:
            return error("no such job (the server may have restarted, or it was evicted; press Generate again)",
                         404)
        return JSONResponse(job.snapshot())

    async def job_file(request: Request) -> Response:
        index, kind = request.path_params["index"], request.path_params["kind"]
        found = manager.file(request.path_params["job"], index, kind) if kind in KINDS else None
        if found is None:
            return error("no such file", 404)
        path, name = found
        return FileResponse(path, media_type=KINDS[kind], filename=name,
                            content_disposition_type="inline" if kind == "wav" else "attachment")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(exc.detail or "error", exc.status_code)

    async def server_error(request: Request, exc: Exception) -> Response:
        LOG.exception("request %s failed", request.url.path)
        return error(f"internal error: {type(exc).__name__}: {exc}", 500)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            manager.shutdown()
            streams.shutdown()

    app = Starlette(routes=[
        Route("/", page), Route("/static/{name}", asset), Route("/api/info", info),
        Route("/api/jobs", create_job, methods=["POST"]), Route("/api/jobs/{job}", job_status),
        Route("/api/jobs/{job}/files/{index:int}.{kind}", job_file),
        Route("/api/jobs/{job}/pieces/{index:int}/infill", infill_job, methods=["POST"]),
        *play_routes(streams, config.max_upload_bytes, STUDIO_MAX_PROMPT_WHOLE_NOTES),
    ], exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan,
        middleware=[Middleware(StudioGuard, listen_host=config.host, token=config.token,
                               allowed_hosts=config.allowed_hosts)])
    app.state.manager = manager
    app.state.streams = streams
    app.state.config = config
    app.state.synth = synth
    return app
